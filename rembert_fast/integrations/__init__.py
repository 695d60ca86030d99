"""Bridges from the batch engine (`rembert_fast.inference`) to distributed engines; each needs its extra.

- `rembert_fast.integrations.ray`: callable classes for Ray Data's `Dataset.map_batches`
  (`pip install 'rembert_fast[ray]'`).
"""
