from airbundle.cli import main

main()
