"""평가 게이트 패키지: `python -m eval` (이 단계 폴더에서 실행). 자세한 설명은 eval/gate.py."""
