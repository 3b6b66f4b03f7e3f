from psyche_core.cli import main

main()
