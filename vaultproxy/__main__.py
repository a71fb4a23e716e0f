from vaultproxy.cli import main

raise SystemExit(main())
