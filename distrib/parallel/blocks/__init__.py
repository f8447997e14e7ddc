"""Row blocks on a Dask cluster: rows, labels and weights that a host on a worker holds and
evaluates (`block`), where each block's rows come from (`sources`), which worker holds which
block (`placement`), the host actors (`host`) and the direct channel that reaches them
(`channel`), distributed's RPC to them (`rpc`), the fixed order of the sums
(`partial_sums`), and the runner a solver calls (`runner`)."""
