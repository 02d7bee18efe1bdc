"""WAL pages written per message by three layouts of the SQLite `messages` table.

Replays the c2c benchmark's write pattern (conversation ids of 47 bytes, 134-byte contents,
one sender per pair) in batches, with checkpoints off, and counts the frames the WAL grew by.
Only the `messages` table and its indexes are written, so the figures isolate the table's layout
from the rest of a send. Used for docs/BENCHMARKS.md ("Messages in arrival order", "Integer
conversation keys").

    python3 docs/bench/wal-pages-per-message.py
"""

import collections
import os
import random
import sqlite3
import tempfile

PAGE = 4096
FRAME = PAGE + 24
WAL_HEADER = 32

CLUSTERED = """
CREATE TABLE messages (conversation_id TEXT NOT NULL, seq INTEGER NOT NULL, id INTEGER NOT NULL,
  sender TEXT NOT NULL, recipient TEXT NOT NULL, client_msg_id TEXT NOT NULL,
  content TEXT NOT NULL, ext TEXT, server_time INTEGER NOT NULL, mentions TEXT,
  PRIMARY KEY (conversation_id, seq)) WITHOUT ROWID;
CREATE UNIQUE INDEX messages_dedupe ON messages (conversation_id, sender, client_msg_id);
"""

ARRIVAL = """
CREATE TABLE messages (conversation_id TEXT NOT NULL, seq INTEGER NOT NULL, id INTEGER NOT NULL,
  sender TEXT NOT NULL, recipient TEXT NOT NULL, client_msg_id TEXT NOT NULL,
  content TEXT NOT NULL, ext TEXT, server_time INTEGER NOT NULL, mentions TEXT);
CREATE UNIQUE INDEX messages_by_seq ON messages (conversation_id, seq);
CREATE UNIQUE INDEX messages_dedupe ON messages (conversation_id, sender, client_msg_id);
"""

# Migration 0006 (ADR 0010): the same, with the conversation named by an integer key.
INTEGER_KEYS = ARRIVAL.replace("conversation_id TEXT NOT NULL", "conversation_id INTEGER NOT NULL")

INSERT = """
INSERT INTO messages (id, conversation_id, seq, sender, recipient, client_msg_id, content, ext,
  server_time, mentions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)
ON CONFLICT (conversation_id, sender, client_msg_id) DO NOTHING
"""


def wal_pages_per_message(schema, conversations, batch, total=40_000, seed=1, integer_keys=False):
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as dir:
        path = os.path.join(dir, "t.db")
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("PRAGMA cache_size=-65536")
        conn.executescript(schema)

        def frames():
            size = os.path.getsize(path + "-wal")
            return (size - WAL_HEADER) // FRAME if size > WAL_HEADER else 0

        ids = [
            f"c2c:c2c-mx68bac6-magpie-{i}:c2c-mx68bac6-magpie-{i + 1}"
            for i in range(conversations)
        ]
        seqs = collections.Counter()
        message_id = 253_892_075_848_728_576
        before = frames()
        written = 0
        while written < total:
            conn.execute("BEGIN IMMEDIATE")
            for _ in range(batch):
                index = rng.randrange(conversations)
                conversation = ids[index]
                seqs[conversation] += 1
                seq = seqs[conversation]
                message_id += rng.randint(1, 1000)
                sender = conversation.split(":")[1 + rng.randint(0, 1)]
                conn.execute(
                    INSERT,
                    (message_id, index + 1 if integer_keys else conversation, seq, sender, "x" * 21, f"k{seq}", "y" * 134,
                     '{"b":{"k":0,"s":0,"t":0}}', 1_700_000_000_000 + written),
                )
                written += 1
            conn.execute("COMMIT")
        pages = (frames() - before) / total
        conn.close()
        return pages


if __name__ == "__main__":
    print("conversations  batch  clustered  arrival-order  integer-keys")
    for conversations, batch in [(100, 25), (100, 200), (100, 400), (5000, 25), (5000, 200), (5000, 400)]:
        clustered = wal_pages_per_message(CLUSTERED, conversations, batch)
        arrival = wal_pages_per_message(ARRIVAL, conversations, batch)
        integer = wal_pages_per_message(INTEGER_KEYS, conversations, batch, integer_keys=True)
        print(f"{conversations:13d}  {batch:5d}  {clustered:9.2f}  {arrival:13.2f}  {integer:12.2f}")
