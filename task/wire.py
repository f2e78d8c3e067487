"""Names on the wire that clients write and the server reads."""

CLIENT_RECORD = "client"  # ConfigRecord in a train reply: node id, bytes sent, privacy report
