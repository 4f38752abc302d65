"""The user's own SNS posts: unlabelled posts read from files or hub splits, and the guard that keeps evaluation
posts out of them (and out of every other training input)."""
