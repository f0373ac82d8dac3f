from keito_instrument.cli import main

raise SystemExit(main())
