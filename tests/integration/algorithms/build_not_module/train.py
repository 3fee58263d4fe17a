raise SystemExit("train.py must never run when build_model fails")
