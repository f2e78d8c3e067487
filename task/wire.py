"""The wire contract: every record and key the server and the clients exchange, once.

Flower's Message API carries named records (``ArrayRecord``, ``ConfigRecord``,
``MetricRecord``) in a ``RecordDict``; clients write these names and the server reads
them, so both sides import them from here.
"""

# --- records in a message's RecordDict ------------------------------------------------
ARRAYS_RECORD = "arrays"  # ArrayRecord: global weights out, local weights back
CONFIG_RECORD = "config"  # ConfigRecord the strategy sends with a train/evaluate request
METRICS_RECORD = "metrics"  # MetricRecord of every reply
CLIENT_RECORD = "client"  # ConfigRecord in a train reply: node id, bytes sent, privacy report

# --- ConfigRecord keys of a request (server → client) ---------------------------------
SERVER_ROUND = "server-round"  # set by Flower's strategies in every request
LEARNING_RATE = "learning-rate"  # the train config of ``Strategy.start``
# where a simulated client keeps its privacy ledger file (train config; node-config wins)
LEDGER_DIR = "ledger-dir"
# the server's record of how many events each partition's ledger held at its last reply
# (train config, parallel lists): a node whose own ledger is shorter has lost it
SPENT_PARTITIONS = "spent-partitions"
SPENT_EVENTS = "spent-events"
# the server's estimate of each group's share of the population, in the run's group order
# (train config of the representation strategy, from round 2): post-processing of the
# clients' released counts, which sets their local group weights (fair.local-shares)
POPULATION_SHARES = "population-shares"

# --- MetricRecord keys of a reply (client → server) -----------------------------------
EPSILON = "epsilon"  # cumulative ε of the client (inf without local DP)
NUM_EXAMPLES = "num-examples"  # Flower's ``weighted_by_key``
TRAIN_LOSS = "train-loss"  # mean local training loss: q-FedAvg's F_k
TRAIN_ACCURACY = "train-accuracy"
TRAIN_SECONDS = "train-seconds"  # train-reply metric the server sums into ``client_train_s``
BUDGET_EXHAUSTED = "budget-exhausted"  # 1: the DP budget refused the round, nothing trained
GROUP_COUNTS = "group-counts"  # (noised) examples per group, in the run's group order
FAIR_METRIC = "fair-metric"  # the client's local group-accuracy gap (FairFed)
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"  # evaluate-reply metric behind the client-level spread

#: The MetricRecord keys of every train reply (``clients.rounds``); the server rejects a
#: reply with other keys, since Flower's metric aggregation needs one key set.
TRAIN_METRICS = frozenset(
    {EPSILON, NUM_EXAMPLES, TRAIN_LOSS, TRAIN_ACCURACY, TRAIN_SECONDS, BUDGET_EXHAUSTED,
     GROUP_COUNTS, FAIR_METRIC}
)  # fmt: skip
#: The MetricRecord keys of every evaluate reply.
EVAL_METRICS = frozenset({NUM_EXAMPLES, EVAL_LOSS, EVAL_ACCURACY})

# --- keys of the CLIENT_RECORD ConfigRecord ---------------------------------------------
NODE_ID = "node-id"
# node-config's: stable where node ids are not (a resumed run); also the MetricRecord key
# of a reply to the server's roll call (a query message, strategies/sampling.py)
PARTITION_ID = "partition-id"
BYTES_SENT = "bytes-sent"
# The privacy report (local DP only), with EPSILON and BUDGET_EXHAUSTED as above:
DELTA = "delta"
BUDGET_EPSILON = "budget-epsilon"
ACCOUNTANT = "accountant"
NOISE_MULTIPLIER = "noise-multiplier"
HISTORY_SIGMA = "history-sigma"  # the ledger's events, one column each
HISTORY_Q = "history-q"
HISTORY_STEPS = "history-steps"
SECURE_RNG = "secure-rng"

# --- the client's own state (``context.state``), never sent ---------------------------
PRIVACY_STATE = "privacy"  # ConfigRecord of ``PrivacyLedger.to_state``
