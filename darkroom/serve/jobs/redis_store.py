"""The job store on a Redis server, for a deployment over several machines.

A document is a hash (`v`: version, `doc`: JSON) with Redis's own expiry; the due index of a kind
is a sorted set scored by due time; blobs are plain keys. Inserts and swaps are Lua scripts, so
each is atomic on the server, the inserts a swap causes included.
"""

from __future__ import annotations

import json
from typing import Any

from darkroom.serve.jobs.insert import Insert

INSERT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('HGET', KEYS[1], 'v'), redis.call('HGET', KEYS[1], 'doc')}
end
redis.call('HSET', KEYS[1], 'v', 1, 'doc', ARGV[1])
if ARGV[2] ~= '' then redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4]) end
if ARGV[3] ~= '' then redis.call('PEXPIREAT', KEYS[1], ARGV[3]) end
return {1, 1, ARGV[1]}
"""
SWAP = """
local v = redis.call('HGET', KEYS[1], 'v')
if (not v) or tonumber(v) ~= tonumber(ARGV[1]) then return 0 end
if ARGV[5] ~= '' then
  local score = redis.call('ZSCORE', KEYS[2], ARGV[6])
  if (not score) or tonumber(score) > tonumber(ARGV[5]) then return 0 end
end
redis.call('HSET', KEYS[1], 'v', tonumber(v) + 1, 'doc', ARGV[2])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[6])
else redis.call('ZREM', KEYS[2], ARGV[6]) end
if ARGV[4] ~= '' then redis.call('PEXPIREAT', KEYS[1], ARGV[4])
else redis.call('PERSIST', KEYS[1]) end
for i = 0, tonumber(ARGV[7]) - 1 do
  local doc, index, a = KEYS[3 + 2 * i], KEYS[4 + 2 * i], 8 + 4 * i
  if redis.call('EXISTS', doc) == 0 then
    redis.call('HSET', doc, 'v', 1, 'doc', ARGV[a])
    if ARGV[a + 1] ~= '' then redis.call('ZADD', index, ARGV[a + 1], ARGV[a + 3]) end
    if ARGV[a + 2] ~= '' then redis.call('PEXPIREAT', doc, ARGV[a + 2]) end
  end
end
return 1
"""


def _opt(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _ms(value: float | None) -> str:
    return "" if value is None else str(int(value * 1000))


class RedisStore:
    """`store.Store` on Redis; every key under `namespace:`."""

    def __init__(self, uri: str, namespace: str = "darkroom") -> None:
        import redis

        self.client = redis.Redis.from_url(uri, socket_timeout=10, socket_connect_timeout=5)
        self.ns = namespace
        self._insert = self.client.register_script(INSERT)
        self._swap = self.client.register_script(SWAP)

    def _doc(self, kind: str, key: str) -> str:
        return f"{self.ns}:d:{kind}:{key}"

    def _index(self, kind: str) -> str:
        return f"{self.ns}:z:{kind}"

    def _blob(self, key: str) -> str:
        return f"{self.ns}:b:{key}"

    def _insert_args(self, item: Insert) -> tuple[list[str], list[str]]:
        return ([self._doc(item.kind, item.key), self._index(item.kind)],
                [json.dumps(item.doc), _opt(item.due), _ms(item.expires), item.key])

    def insert(self, item: Insert) -> tuple[dict[str, Any], int, bool]:
        keys, args = self._insert_args(item)
        inserted, version, doc = self._insert(keys=keys, args=args)
        return json.loads(doc), int(version), bool(inserted)

    def get(self, kind: str, key: str) -> tuple[dict[str, Any], int] | None:
        version, doc = self.client.hmget(self._doc(kind, key), "v", "doc")
        return None if doc is None else (json.loads(doc), int(version))

    def get_many(self, kind: str, keys: list[str]) -> dict[str, dict[str, Any]]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(self._doc(kind, key), "doc")
        return {key: json.loads(doc) for key, doc in zip(keys, pipe.execute(), strict=True)
                if doc is not None}

    def swap(self, kind: str, key: str, version: int, doc: dict[str, Any], due: float | None,
             expires: float | None, if_due_by: float | None = None,
             inserts: tuple[Insert, ...] = ()) -> bool:
        keys = [self._doc(kind, key), self._index(kind)]
        args = [str(version), json.dumps(doc), _opt(due), _ms(expires), _opt(if_due_by), key,
                str(len(inserts))]
        for item in inserts:
            more_keys, more_args = self._insert_args(item)
            keys += more_keys
            args += more_args
        return bool(self._swap(keys=keys, args=args))

    def touch(self, kind: str, keys: list[str], due: float) -> None:
        if keys:
            self.client.zadd(self._index(kind), dict.fromkeys(keys, due), xx=True)

    def due(self, kind: str, now: float, limit: int) -> list[str]:
        found = [k.decode() for k in self.client.zrangebyscore(
            self._index(kind), "-inf", now, start=0, num=limit)]
        pipe = self.client.pipeline(transaction=False)
        for key in found:
            pipe.exists(self._doc(kind, key))
        gone = [key for key, there in zip(found, pipe.execute(), strict=True) if not there]
        if gone:  # its document expired: nothing is due anymore
            self.client.zrem(self._index(kind), *gone)
        return [key for key in found if key not in gone]

    def rank(self, kind: str, key: str) -> int:
        score = self.client.zscore(self._index(kind), key)
        return 0 if score is None else int(self.client.zcount(self._index(kind), "-inf",
                                                               f"({score!r}"))

    def put_blob(self, key: str, data: bytes, expires: float | None) -> None:
        self.client.set(self._blob(key), data,
                        pxat=None if expires is None else int(expires * 1000))

    def get_blob(self, key: str) -> bytes | None:
        return self.client.get(self._blob(key))

    def delete_blobs(self, keys: list[str]) -> None:
        if keys:
            self.client.delete(*(self._blob(k) for k in keys))

    def sweep(self, now: float) -> int:
        return 0  # Redis expires keys itself

    def close(self) -> None:
        self.client.close()

