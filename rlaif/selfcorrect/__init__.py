"""Self-correction: SCoRe (Kumar et al. 2024) and retry data (Ye et al. 2024).

- `rlaif.selfcorrect.evaluate.evaluate_self_correction` (`rlaif self-correct`): two greedy
  attempts per problem through any back end; Accuracy@t1, Accuracy@t2, Δ, Δ^{i→c}, Δ^{c→i}.
- `rlaif.selfcorrect.train.train_self_correct` (`rlaif train-self-correct`): SCoRe stage I
  then stage II on TRL's GRPOTrainer (`rlaif.selfcorrect.trainer.SCoReTrainer`), with the
  per-token advantages and KL weights of `rlaif.selfcorrect.advantages`.
- `rlaif.selfcorrect.retry.write_retry_data` (`rlaif retry-data`): step-by-step solutions with
  fake mistakes taken back by `[BACK]`, as SFT prompt-completion records.
- `rlaif.selfcorrect.gsm8k`: gold and predicted answers, the exact-match reward.

Nothing here imports torch or TRL at import time except `advantages` and `trainer`.
"""
