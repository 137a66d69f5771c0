"""The keys a Ray trial reports, the files it keeps and what the searcher holds: shared by the driver's modules."""

OBJECTIVE = "objective"  # the reported key ASHA and the searcher minimise
COST = "cost"  # the second objective of a two-objective front
LAST_CHECKPOINT = "last.ckpt"  # a Ray trial's newest epoch checkpoint, in its folder
MARKER = "epoch.json"  # what a Ray checkpoint holds: the epoch and the path of last.ckpt
RECORDED = ".recorded"  # written into a Ray experiment's folder once its trials are in the Optuna storage
DUPLICATE = "duplicate_of"  # config and result key of a proposal that repeats a finished trial (JSON: which, its result)
TIME_ATTR = "epoch"  # the budget's steps reached (1-based: epochs trained, unless budget.equal sizes the epochs), ASHA's time axis
TRAINED_EPOCH = "trained_epoch"  # the trial's own epoch (0-based) of a report
HELD_AT_MOST = 8  # proposals the searcher holds back at once because they repeat a running trial
