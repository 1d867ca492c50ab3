from cachetap.cli.main import main

main()
