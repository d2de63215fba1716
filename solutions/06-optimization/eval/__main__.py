"""`python -m eval`: 평가 게이트 실행 (eval/gate.py 의 main)."""

from .gate import main

raise SystemExit(main())
