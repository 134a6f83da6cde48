from .cli import daemon_main

daemon_main()
