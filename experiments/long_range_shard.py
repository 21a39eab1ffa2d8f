"""Reads the synthetic long-range sequences of a `mixattn data` directory (shared by the scripts
in experiments/)."""
import json

import numpy as np

SHARD_HEADER_TOKENS = 32  # the 64-byte token-shard header (src/train/token_shards.h), in uint16


def read_long_range_sequences(data_dir):
    """DATA_DIR/train_longrange.bin as int64 [sequences, length], and DATA_DIR/data.json."""
    info = json.load(open(f"{data_dir}/data.json"))
    length = info["long_range"]["sequence_length"]
    tokens = np.fromfile(f"{data_dir}/train_longrange.bin", np.uint16)[SHARD_HEADER_TOKENS:]
    sequences = tokens[: len(tokens) // length * length].astype(np.int64).reshape(-1, length)
    return sequences, info
