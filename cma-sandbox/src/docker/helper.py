import os, sys, json, stat, shutil, time, struct
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
    if n.isascii():
        return n
    return n.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def size_hint(s, done):
    # What is left by the size fstat saw, plus one byte to see the end (or growth): asking for
    # a large buffer costs an allocation of that size per call, far more than the read itself.
    return min(max(s.st_size - done + 1, 4096), 1 << 20)


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
            n = size_hint(s, off + got)
            n = n if want is None else min(n, want - got)
            b = os.read(fd, n)
            parts.append(b)
            got += len(b)
            if mx is not None and got > mx:
                return out({"e": "big", "size": got, "max": mx})
            # A short read of a regular file is its end: no further call to see it.
            if len(b) < n:
                break
        out({"size": s.st_size}, b"".join(parts))
    finally:
        os.close(fd)


def read_small(p, mx):
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        return {"e": "os", "errno": e.errno or 0, "msg": e.strerror or ""}, b""
    try:
        s = os.fstat(fd)
        if stat.S_ISDIR(s.st_mode):
            return {"e": "os", "errno": 21, "msg": "Is a directory"}, b""
        if not stat.S_ISREG(s.st_mode):
            return {"e": "notreg"}, b""
        if s.st_size > mx:
            return {"e": "big", "size": s.st_size, "max": mx}, b""
        parts, got = [], 0
        while True:
            n = min(size_hint(s, got), mx + 1 - got)
            b = os.read(fd, n)
            parts.append(b)
            got += len(b)
            if got > mx:
                return {"e": "big", "size": got, "max": mx}, b""
            # A short read of a regular file is its end: no further call to see it.
            if len(b) < n:
                break
        return {"l": got}, b"".join(parts)
    except OSError as e:
        return {"e": "os", "errno": e.errno or 0, "msg": e.strerror or ""}, b""
    finally:
        os.close(fd)


def readmany(r):
    mx, heads, parts = r.get("max", 0), [], []
    for p in r.get("ps", []):
        h, d = read_small(p, mx)
        heads.append(h)
        parts.append(d)
    out({"r": heads}, b"".join(parts))


def lines_with(d, nd, ml, parts):
    # [line number, length, terminated, bytes kept] of each line of d holding nd; the kept
    # text goes to parts. Returns (matches, bytes kept).
    ms, pos, ln, kept = [], 0, 1, 0
    i = d.find(nd) if nd else -1
    while i >= 0:
        s = d.rfind(b"\n", 0, i) + 1
        e = d.find(b"\n", i)
        t = e >= 0
        if not t:
            e = len(d)
        ln += d.count(b"\n", pos, s)
        pos = s
        keep = e - s <= ml
        ms.append([ln, e - s, 1 if t else 0, e - s if keep else 0])
        if keep:
            parts.append(d[s:e])
            kept += e - s
        i = d.find(nd, e + 1) if t else -1
    return ms, kept


def findmany(r):
    mx, nd, ml = r.get("max", 0), r.get("needle", "").encode(), r.get("ml", 0)
    heads, parts = [], []
    for p in r.get("ps", []):
        h, d = read_small(p, mx)
        if "e" in h:
            heads.append(h)
            continue
        if b"\0" in d[:512]:
            heads.append({"b": 1})
            continue
        heads.append({"m": lines_with(d, nd, ml, parts)[0]})
    out({"r": heads}, b"".join(parts))


def findtree(r):
    # Walk as the grep tool does (entries in scandir order, what os.walk sees); per text file
    # its lines holding the needle, or (no needle) its whole content; files over max reported
    # as big. Stops past `out` bytes (done 0) and says how many regular files it went
    # through (seen).
    mx, nd, ml = r.get("max", 0), r.get("needle", "").encode(), r.get("ml", 0)
    skip, cap, budget = set(r.get("skip", [])), r.get("files", 0), r.get("out", 0)
    deadline = time.monotonic() + r.get("secs", 30)
    items, parts, used, seen = [], [], 0, 0
    if not os.path.isdir(r.get("p")):
        return out({"e": "os", "errno": 20, "msg": "Not a directory"})
    stack = [r.get("p")]
    while stack:
        if time.monotonic() > deadline:
            return out({"e": "timeout"})
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                es = [(lossy(e.name), e) for e in it]
        except OSError:
            continue
        subs = []
        for n, e in es:
            full = d + n if d.endswith("/") else d + "/" + n
            try:
                if e.is_dir(follow_symlinks=False):
                    if n not in skip:
                        subs.append(full)
                    continue
                if not e.is_file(follow_symlinks=False):
                    continue
            except OSError:
                continue
            seen += 1
            if seen > cap:
                return out({"items": items, "done": 1, "seen": seen}, b"".join(parts))
            if n != e.name:
                # Not valid UTF-8: the caller could not open it by this name either.
                continue
            h, dat = read_small(full, mx)
            if "e" in h:
                if h["e"] == "big":
                    items.append({"p": full, "big": 1})
                continue
            if b"\0" in dat[:512]:
                continue
            if not nd:
                # No string: the whole content of each text file.
                items.append({"p": full, "c": len(dat)})
                parts.append(dat)
                used += len(dat) + len(full) + 16
            else:
                ms, kept = lines_with(dat, nd, ml, parts)
                if ms:
                    items.append({"p": full, "m": ms})
                    used += kept + len(ms) * (len(full) + 16)
            if used > budget:
                return out({"items": items, "done": 0, "seen": seen}, b"".join(parts))
        stack.extend(reversed(subs))
    out({"items": items, "done": 1, "seen": seen}, b"".join(parts))


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


def entries(p):
    es = []
    with os.scandir(p) as it:
        for e in it:
            try:
                x = st(e.stat(follow_symlinks=False))
            except OSError:
                continue
            x["name"] = lossy(e.name)
            es.append(x)
    return es


def listmany(r):
    rs = []
    for p in r.get("ps", []):
        try:
            rs.append({"entries": entries(p)})
        except OSError as e:
            rs.append({"e": "os", "errno": e.errno or 0, "msg": e.strerror or ""})
    out({"r": rs})


def tree(r):
    # Every entry under p, depth first, names in byte order, a directory before its contents:
    # per entry <H path len> path <B kind 0 dir 1 file 2 link> <I mode> <Q size> <q mtime ns>
    # <q ctime ns> <Q inode> <H link len> link, little-endian. Special files are left out.
    top, maxd = os.fsencode(r.get("p")), r.get("depth", 128)
    deadline = time.monotonic() + r.get("secs", 50)
    recs, stack = [], [(top, b"", iter(sorted(os.listdir(top))))]
    while stack:
        if time.monotonic() > deadline:
            return out({"e": "timeout"})
        d, rel, it = stack[-1]
        name = next(it, None)
        if name is None:
            stack.pop()
            continue
        full, p = d + b"/" + name, rel + name
        try:
            s = os.lstat(full)
        except FileNotFoundError:
            continue
        m = s.st_mode
        k = 0 if stat.S_ISDIR(m) else 1 if stat.S_ISREG(m) else 2 if stat.S_ISLNK(m) else -1
        if k < 0:
            continue
        link = os.readlink(full) if k == 2 else b""
        recs.append(struct.pack("<H", len(p)) + p + struct.pack(
            "<BIQqqQH", k, m, s.st_size if k == 1 else 0, s.st_mtime_ns, s.st_ctime_ns,
            s.st_ino, len(link)) + link)
        if k == 0:
            if len(stack) > maxd:
                return out({"e": "deep"})
            stack.append((full, p + b"/", iter(sorted(os.listdir(full)))))
    out({"count": len(recs)}, b"".join(recs))


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
        elif op == "readmany":
            readmany(r)
        elif op == "findmany":
            findmany(r)
        elif op == "findtree":
            findtree(r)
        elif op == "write":
            write(p, data)
        elif op == "mkdirs":
            os.makedirs(p, exist_ok=True)
            out({})
        elif op == "list":
            out({"entries": entries(p)})
        elif op == "listmany":
            listmany(r)
        elif op == "remove":
            remove(p, r.get("r"))
        elif op == "tree":
            tree(r)
        elif op == "id":
            out({"uid": os.getuid(), "gid": os.getgid()})
        else:
            out({"e": "other", "msg": "unknown op"})
    except OSError as e:
        out({"e": "os", "errno": e.errno or 0, "msg": e.strerror or ""})
    except Exception as e:
        out({"e": "other", "msg": repr(e)})
