"""Names on the wire that clients write and the server reads."""

CLIENT_RECORD = "client"  # ConfigRecord in a train reply: node id, bytes sent, privacy report
TRAIN_SECONDS = "train-seconds"  # train-reply metric the server sums into ``client_train_s``
EVAL_ACCURACY = "eval-accuracy"  # evaluate-reply metric behind the client-level spread

#: The MetricRecord keys of every train reply (``clients.rounds``); the server rejects a
#: reply with other keys, since Flower's metric aggregation needs one key set.
TRAIN_METRICS = frozenset(
    {"epsilon", "num-examples", "train-loss", "train-accuracy", TRAIN_SECONDS,
     "budget-exhausted", "group-counts", "fair-metric"}
)  # fmt: skip
#: The MetricRecord keys of every evaluate reply.
EVAL_METRICS = frozenset({"num-examples", "eval-loss", EVAL_ACCURACY})
