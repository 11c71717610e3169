"""The heap tuning around a model's training (prvr.runtime): a model that gives freed memory back must not leave
the next model of the same process (`prvr compare`) without the tuning the entry point applied."""

from prvr import runtime


def test_release_then_keep_again_in_one_process():
    tuned = runtime.tune_allocator()  # what the CLI does at start (False where glibc or the env says no)
    try:
        assert runtime.allocator_for_training(False) is False  # Holmes: freed memory given back
        assert runtime.allocator_for_training(True) is tuned  # the next model keeps it again, as the entry point set
        assert runtime.allocator_for_training(True) is tuned  # and stays so
    finally:
        runtime.tune_allocator()


def test_no_tuning_where_the_entry_point_applied_none(monkeypatch):
    monkeypatch.setattr(runtime, "_done", False)
    monkeypatch.setattr(runtime, "_released", False)
    assert runtime.allocator_for_training(True) is False  # a library user who never tuned is not tuned here
    assert runtime._done is False
