from janelm.cli import main

raise SystemExit(main())
