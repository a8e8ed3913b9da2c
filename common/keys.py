"""Config keys with a meaning shared by the trainer, the run store and the sweeps (data, not logic)."""

# Keys (dotted prefixes) whose change on resume never alters the weights' trajectory: logging,
# evals, output, speed knobs, where the same data is read from and whether it is checked first. Anything else is flagged on
# resume. (The trainer's list; `epochs` is not here: the cosine schedule depends on it.)
HARMLESS_ON_RESUME = ("run_dir", "evals.", "recons.", "checkpoint.", "log.", "data.num_workers",
                      "compile", "dist_timeout_minutes", "data.train_path", "data.val_path",
                      "data.verify")
