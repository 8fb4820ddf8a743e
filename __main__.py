from retain.launch import main

main()
