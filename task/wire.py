"""Names on the wire that clients write and the server reads."""

CLIENT_RECORD = "client"  # ConfigRecord in a train reply: node id, bytes sent, privacy report
TRAIN_SECONDS = "train-seconds"  # train-reply metric the server sums into ``client_train_s``
EVAL_ACCURACY = "eval-accuracy"  # evaluate-reply metric behind the client-level spread
