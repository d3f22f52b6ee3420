#!/usr/bin/env python3
"""Follow a hivesync node's change feed, printing each change as a JSON line; resumes from
its cursor file (snapshot first when there is none). docs/protocol.md explains each message.
  pip install websockets
  python3 consumer.py ws://127.0.0.1:7070/v1/sync cursor.txt [--until-live] [--token T]"""
import asyncio, json, sys
import websockets

async def consume(url, cursor_file, until_live=False, token=None):
    try:
        cursor = int(open(cursor_file).read())
    except (FileNotFoundError, ValueError):
        cursor = None                                   # no cursor: a snapshot first
    # A node's frames stay near 1 MiB but may reach 64 MiB: websockets' default is 1 MiB.
    async with websockets.connect(url, subprotocols=["hivesync.v1.json"], max_size=64 << 20) as ws:
        await ws.send(json.dumps({"type": "hello", "token": token, "client": "consumer.py"}))
        welcome = json.loads(await ws.recv())
        if welcome["type"] != "welcome":
            sys.exit(f"refused: {welcome}")
        sub = {"type": "subscribe", "sub": "s"}
        if cursor is not None:
            sub["from"] = cursor
        await ws.send(json.dumps(sub))
        async for frame in ws:
            m = json.loads(frame)
            if m["type"] == "error":
                sys.exit(f"node error {m['code']}: {m['message']}")
            if m["type"] == "snapshot":
                for row in m["rows"]:
                    print(json.dumps(row))
                if not m["done"]:
                    continue                            # the cursor moves at the last chunk
                cursor = m["at"]
            elif m["type"] == "changes":
                if cursor is not None and m["prev"] != cursor:
                    sys.exit(f"gap: prev {m['prev']}, cursor {cursor}; run again to resume")
                for c in m["changes"]:
                    print(json.dumps(c))
                cursor = m["changes"][-1]["seq"]
            if cursor is not None:
                open(cursor_file, "w").write(str(cursor))   # after printing: at least once
                await ws.send(json.dumps({"type": "ack", "sub": "s", "seq": cursor}))
            if m["type"] == "live" and until_live:
                return

args = sys.argv[1:]
token = args[args.index("--token") + 1] if "--token" in args else None
asyncio.run(consume(args[0], args[1], "--until-live" in args, token))
