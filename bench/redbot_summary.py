"""Summarises REDbot's HAR output for one URL (bench/redbot.sh): a line with
the status and the number of notes per level, then each WARN and BAD note;
the last line says BAD or OK."""
import json
import sys
from collections import Counter

entries = json.load(sys.stdin)["log"]["entries"]
levels, notes, status = Counter(), [], None
for entry in entries:
    status = entry["response"]["status"]
    for note in entry["_red_messages"]:
        levels[note["level"]] += 1
        if note["level"] in ("BAD", "WARN"):
            notes.append("    %s %s: %s" % (note["level"], note["note_id"], note["summary"]))
counts = ", ".join("%d %s" % (n, level) for level, n in sorted(levels.items()))
print("%s (%s): %s" % (sys.argv[1], status, counts))
for note in notes:
    print(note)
print("BAD" if levels["BAD"] else "OK")
