"""Files every package writes and reads the same way: durable atomic writes, JSON lines, run directories.

Torch-free and below every other package (it imports nothing of jijian), so the trainer, the
server, the planner, the knowledge base and the guard share one implementation of each guarantee.
"""

from jijian.files.durable import fsync_dir, replaced_directory, write_atomic, write_json_atomic, write_text_atomic
from jijian.files.jsonl import JsonLinesError, drop_torn_tail, iter_json_lines, read_json_lines

__all__ = [
    "JsonLinesError",
    "drop_torn_tail",
    "fsync_dir",
    "iter_json_lines",
    "read_json_lines",
    "replaced_directory",
    "write_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
