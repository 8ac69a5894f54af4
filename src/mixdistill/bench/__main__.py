from mixdistill.bench.steps import main

raise SystemExit(main())
