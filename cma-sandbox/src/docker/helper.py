import os, sys, json, stat, time, struct
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
    # Files are served until the reply holds `budget` bytes; the rest are answered "later"
    # (the host asks again), so a reply never exceeds budget + max.
    mx, budget, heads, parts, used = r.get("max", 0), r.get("budget", 0), [], [], 0
    for p in r.get("ps", []):
        if heads and used >= budget:
            heads.append({"e": "later"})
            continue
        h, d = read_small(p, mx)
        heads.append(h)
        parts.append(d)
        used += len(d) + 64
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


# Bytes of reply header one match can take (`[line, length, terminated, kept], `).
MATCH_HEAD = 48


def findmany(r):
    # As readmany: past `budget` bytes of reply (header and data), the rest are "later".
    mx, nd, ml = r.get("max", 0), r.get("needle", "").encode(), r.get("ml", 0)
    budget, heads, parts, used = r.get("budget", 0), [], [], 0
    for p in r.get("ps", []):
        if heads and used >= budget:
            heads.append({"e": "later"})
            continue
        used += 64
        h, d = read_small(p, mx)
        if "e" in h:
            heads.append(h)
            continue
        if b"\0" in d[:512]:
            heads.append({"b": 1})
            continue
        ms, kept = lines_with(d, nd, ml, parts)
        heads.append({"ms": ms})
        used += kept + MATCH_HEAD * len(ms)
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
            # What the item adds to the reply, header and data (a bound the host relies on).
            head = len(json.dumps(full)) + 32
            if not nd:
                # No string: the whole content of each text file.
                items.append({"p": full, "c": len(dat)})
                parts.append(dat)
                used += len(dat) + head
            else:
                ms, kept = lines_with(dat, nd, ml, parts)
                if ms:
                    items.append({"p": full, "ms": ms})
                    used += kept + head + MATCH_HEAD * len(ms)
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
    # Through a symlink the file it names is replaced (as an open for writing would), not the
    # link.
    p = os.path.realpath(p)
    try:
        s = os.stat(p)
    except FileNotFoundError:
        s = None
    if s is not None:
        if stat.S_ISDIR(s.st_mode):
            raise IsADirectoryError(21, "Is a directory")
        if not stat.S_ISREG(s.st_mode):
            return out({"e": "notreg"})
    mode = stat.S_IMODE(s.st_mode) if s is not None else 0o644
    # A new file next to the old one, renamed over it once complete: a write that fails half
    # way (disk full, quota) leaves the old content, never a truncated file.
    name = ".%s.cma-%d-%x.tmp" % (os.path.basename(p)[:200], os.getpid(), time.monotonic_ns())
    tmp = os.path.join(os.path.dirname(p), name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except PermissionError:
        # A writable file in a directory this user cannot add to: overwrite it in place.
        return write_in_place(p, data)
    try:
        try:
            os.fchmod(fd, mode)
            v = memoryview(data)
            while v:
                v = v[os.write(fd, v):]
        finally:
            os.close(fd)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    out({})


def write_in_place(p, data):
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


class TooBig(Exception):
    pass


def entries(p, cap, budget):
    # The listing as JSON texts, at most `cap` entries and `budget` bytes (else TooBig).
    es, used = [], 0
    with os.scandir(p) as it:
        for e in it:
            try:
                x = st(e.stat(follow_symlinks=False))
            except OSError:
                continue
            x["name"] = lossy(e.name)
            j = json.dumps(x)
            used += len(j) + 1
            es.append(j)
            if len(es) > cap or used > budget:
                raise TooBig()
    return es, used


def big_dir(cap):
    return json.dumps({"e": "bigdir", "max": cap})


def listmany(r):
    # Directories are listed until the reply holds `budget` bytes; the rest are "later". One
    # listing may take up to `dirbudget` bytes when it comes first; after others only what is
    # left of `hcap`, else it is "later" too (and comes first next time).
    cap, budget = r.get("cap", 0), r.get("budget", 0)
    dirbudget, hcap = r.get("dirbudget", 0), r.get("hcap", 0)
    rs, used = [], 0
    for p in r.get("ps", []):
        if rs and used >= budget:
            rs.append('{"e":"later"}')
            continue
        room = dirbudget if not rs else min(dirbudget, hcap - used - 4096)
        try:
            es, n = entries(p, cap, room)
            rs.append('{"entries":[' + ",".join(es) + "]}")
            used += n + 16
        except TooBig:
            rs.append('{"e":"later"}' if room < dirbudget else big_dir(cap))
            used += 64
        except OSError as e:
            rs.append(json.dumps({"e": "os", "errno": e.errno or 0, "msg": e.strerror or ""}))
            used += 64
    O.write(('{"r":[' + ",".join(rs) + '],"n":0}\n').encode())
    O.flush()


def list_one(r, p):
    try:
        es, _ = entries(p, r.get("cap", 0), r.get("dirbudget", 0))
    except TooBig:
        O.write((big_dir(r.get("cap", 0))[:-1] + ',"n":0}\n').encode())
        O.flush()
        return
    O.write(('{"entries":[' + ",".join(es) + '],"n":0}\n').encode())
    O.flush()


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def rmtree(p):
    # Iterative (no recursion limit on deep trees) and linear: each directory is listed once,
    # its files removed on the way, its subdirectories kept as names to enter relative to its
    # open descriptor (one per level of the current path).
    top = os.open(p, DIR_FLAGS)
    stack = []

    def enter(fd):
        subs = []
        try:
            with os.scandir(fd) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        subs.append(e.name)
                    else:
                        os.unlink(e.name, dir_fd=fd)
        except BaseException:
            os.close(fd)
            raise
        stack.append((fd, subs))

    try:
        enter(top)
        while stack:
            fd, subs = stack[-1]
            if subs:
                enter(os.open(subs[-1], DIR_FLAGS, dir_fd=fd))
                continue
            os.close(fd)
            stack.pop()
            if stack:
                parent, psubs = stack[-1]
                os.rmdir(psubs.pop(), dir_fd=parent)
    finally:
        for fd, _ in stack:
            os.close(fd)
    os.rmdir(p)


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
            rmtree(p)
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
            list_one(r, p)
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
