from convlint.entry import run

run()
