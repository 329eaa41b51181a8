from higgs_agent.cli import main

raise SystemExit(main())
