from devstack.foreground import main

main()
