from mnistlab.cli import run

run()
