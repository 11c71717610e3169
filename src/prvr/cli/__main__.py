from prvr.cli import main

main()
