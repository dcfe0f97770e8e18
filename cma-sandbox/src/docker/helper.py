import os, sys, json, stat, shutil
I = sys.stdin.buffer
O = sys.stdout.buffer


def kind(m):
    if stat.S_ISDIR(m):
        return "d"
    if stat.S_ISREG(m):
        return "f"
    if stat.S_ISLNK(m):
        return "l"
    return "o"


def st(s):
    return {"k": kind(s.st_mode), "s": s.st_size, "m": s.st_mtime_ns}


def out(h, data=b""):
    h["n"] = len(data)
    O.write(json.dumps(h).encode() + b"\n")
    if data:
        O.write(data)
    O.flush()


def lossy(n):
    return n.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def read(r, p):
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    try:
        s = os.fstat(fd)
        if stat.S_ISDIR(s.st_mode):
            raise IsADirectoryError(21, "Is a directory")
        if not stat.S_ISREG(s.st_mode):
            return out({"e": "notreg"})
        mx = r.get("max")
        if mx is not None and s.st_size > mx:
            return out({"e": "big", "size": s.st_size, "max": mx})
        off, want = r.get("off", 0), r.get("len")
        if off:
            os.lseek(fd, off, 0)
        parts, got = [], 0
        while want is None or got < want:
            b = os.read(fd, 1 << 20 if want is None else min(1 << 20, want - got))
            if not b:
                break
            parts.append(b)
            got += len(b)
            if mx is not None and got > mx:
                return out({"e": "big", "size": got, "max": mx})
        out({"size": s.st_size}, b"".join(parts))
    finally:
        os.close(fd)


def write(p, data):
    d = os.path.dirname(p)
    if d:
        try:
            os.makedirs(d, exist_ok=True)
        except FileExistsError:
            raise NotADirectoryError(20, "Not a directory")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return out({"e": "notreg"})
        v = memoryview(data)
        while v:
            v = v[os.write(fd, v):]
    finally:
        os.close(fd)
    out({})


def listdir(p):
    es = []
    with os.scandir(p) as it:
        for e in it:
            try:
                x = st(e.stat(follow_symlinks=False))
            except OSError:
                continue
            x["name"] = lossy(e.name)
            es.append(x)
    out({"entries": es})


def remove(p, rec):
    s = os.lstat(p)
    if stat.S_ISDIR(s.st_mode):
        if rec:
            shutil.rmtree(p)
        else:
            os.rmdir(p)
    else:
        os.unlink(p)
    out({})


while True:
    line = I.readline()
    if not line:
        break
    r = json.loads(line)
    n = r.get("n", 0)
    data = I.read(n) if n else b""
    op, p = r.get("op"), r.get("p")
    try:
        if op == "stat":
            out(st(os.stat(p) if r.get("f") else os.lstat(p)))
        elif op == "readlink":
            out({"t": lossy(os.readlink(p))})
        elif op == "read":
            read(r, p)
        elif op == "write":
            write(p, data)
        elif op == "mkdirs":
            os.makedirs(p, exist_ok=True)
            out({})
        elif op == "list":
            listdir(p)
        elif op == "remove":
            remove(p, r.get("r"))
        elif op == "id":
            out({"uid": os.getuid(), "gid": os.getgid()})
        else:
            out({"e": "other", "msg": "unknown op"})
    except OSError as e:
        out({"e": "os", "errno": e.errno or 0, "msg": e.strerror or ""})
    except Exception as e:
        out({"e": "other", "msg": repr(e)})
