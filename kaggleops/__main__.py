from kaggleops.cli import main

main()
