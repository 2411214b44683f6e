#!/usr/bin/env bash
# CI, after the main suite (.ci/run calls it): `rlaif ppo` needs the ppo extra, which holds TRL at
# 1.12 (TRL removed PPOTrainer in 1.13), so it cannot share the main environment's newest TRL.
# A fresh virtualenv with the extra runs the PPO tests; pytest's exit code is kept, so a failure
# or "no tests collected" (exit 5) fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .venv-ppo
python3 -m venv .venv-ppo
. .venv-ppo/bin/activate
python -m pip install -q --upgrade pip
pip install -q torch==2.13.0 -e ".[dev,ppo]"
# The PPO tests skip where PPOTrainer is missing; here it must be present, or they would pass by skipping.
python -c "from rlaif.rl.ppo import check_ppo_trl; check_ppo_trl()"
# test_ppo.py whole, test_grpo.py whole (grpo on the oldest TRL the core allows), and the PPO test of
# test_drlaif.py: -k matches test and module names.
python -m pytest -q -p no:cacheprovider tests/test_ppo.py tests/test_grpo.py tests/test_drlaif.py -k "ppo or grpo"
