/*
 * otel_tokens._otlp_scan: the optional compiled walk over a serialized OTLP
 * ExportTraceServiceRequest (see otel_tokens/accelerator.py, which configures
 * and calls it, and falls back to the pure-Python path whenever it declines).
 *
 * Why: in pure Python, reading a decoded span's attributes costs ~8x the
 * decode itself (upb builds a wrapper per KeyValue and a str per key). Here
 * the wire bytes are walked once; only the attributes the extractor reads,
 * on spans that carry usage, become Python objects.
 *
 * Contract (what keeps both paths' results identical): scan() returns either
 * None ("decline": the caller takes the pure-Python path on the same
 * payload) or exactly the slot values, ranks and span fields the Python
 * extractor would read from ExportTraceServiceRequest.FromString(data). It
 * declines on anything it does not mirror exactly, so it is never laxer than
 * upb: malformed wire data, strings that are not strict UTF-8, a field with an
 * unexpected wire type, a singular field repeated in a message we read (upb
 * merges those), groups, nesting deeper than MAX_DEPTH, an attribute value
 * we read that is an array/kvlist (Python would hold a message object).
 * On resources it reads the attribution keys and the caller's fallback key
 * (scan's second argument, e.g. service.name), as the Python path does.
 * Every field of every message is checked against the schema configure()
 * was given (built from the installed protobuf descriptors), read or not.
 *
 * Besides the walk: build() turns plain hits into usage records and prices
 * them with compiled price sets (linear(): pricing._Rates, the same float
 * operations in the same order as its generated Python), and tally() adds
 * records to the aggregator's series as its Python loop does. Both stop at
 * whatever they do not mirror exactly and leave it to Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#define MAX_TYPES 32
#define MAX_FIELDNO 64
#define MAX_SLOTS 64
#define MAX_DEPTH 32
#define TABLE_SIZE 512 /* power of two, > 4x the keys we read */

enum { K_NONE = 0, K_VARINT, K_FIXED64, K_FIXED32, K_BYTES, K_STRING, K_MESSAGE };
/* the message types the walk reads, in the order configure() receives them */
enum { T_REQ = 0, T_RS, T_RES, T_SS, T_SCOPE, T_SPAN, T_KV, T_ANY, T_STATUS, T_FIXED };

typedef struct {
    uint8_t kind;
    uint8_t repeated;
    int16_t sub;
} FieldSpec;

typedef struct {
    char *key;
    Py_ssize_t len;
    int slot;
    int rank;
    int flags; /* F_ARRAY: the slot expects an array (decline); F_ATTRIBUTION: read on resources */
} Entry;
#define F_ARRAY 1
#define F_ATTRIBUTION 2
#define F_LABEL 4 /* a label slot: the value is handed over as extract._label makes it */

static FieldSpec schema[MAX_TYPES][MAX_FIELDNO];
static int high_fields[MAX_TYPES];
static int n_types = 0;
static Entry table[TABLE_SIZE];
static int n_slots = 0, no_rank = 99, max_label = 128, slot_in = -1, slot_out = -1, slot_total = -1, slot_task_scope = -1,
           slot_verify = -1;
static int configured = 0;

/* a decline is not an error: scan() returns None */
#define DECLINE (-1)
#define PYERR (-2)

/* --- wire reading ------------------------------------------------------- */

static int read_varint_slow(const uint8_t **pp, const uint8_t *end, uint64_t *out);

/* Tags and most lengths are one byte: that case without a loop (this runs per field). */
static inline int read_varint(const uint8_t **pp, const uint8_t *end, uint64_t *out) {
    const uint8_t *p = *pp;
    if (p < end && *p < 0x80) {
        *out = *p;
        *pp = p + 1;
        return 0;
    }
    return read_varint_slow(pp, end, out);
}

static int read_varint_slow(const uint8_t **pp, const uint8_t *end, uint64_t *out) {
    const uint8_t *p = *pp;
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (p >= end) return DECLINE;
        uint8_t b = *p++;
        if (i == 9 && b > 1) return DECLINE;
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *pp = p;
            *out = v;
            return 0;
        }
    }
    return DECLINE;
}

typedef struct {
    uint32_t fieldno;
    int wt;
    uint64_t num;          /* varint, fixed64, fixed32 */
    const uint8_t *val;    /* length-delimited */
    Py_ssize_t len;
} Field;

static inline int next_field(const uint8_t **pp, const uint8_t *end, Field *f) {
    uint64_t tag;
    if (read_varint(pp, end, &tag) < 0 || tag > 0xFFFFFFFFu) return DECLINE;
    f->fieldno = (uint32_t)(tag >> 3);
    f->wt = (int)(tag & 7);
    if (f->fieldno == 0) return DECLINE;
    const uint8_t *p = *pp;
    switch (f->wt) {
    case 0:
        return read_varint(pp, end, &f->num);
    case 1:
        if (end - p < 8) return DECLINE;
        memcpy(&f->num, p, 8); /* little-endian hosts only: checked in configure() */
        *pp = p + 8;
        return 0;
    case 5: {
        uint32_t v;
        if (end - p < 4) return DECLINE;
        memcpy(&v, p, 4);
        f->num = v;
        *pp = p + 4;
        return 0;
    }
    case 2: {
        uint64_t len;
        if (read_varint(pp, end, &len) < 0) return DECLINE;
        p = *pp;
        if (len > (uint64_t)(end - p) || len > 0x7FFFFFFF) return DECLINE;
        f->val = p;
        f->len = (Py_ssize_t)len;
        *pp = p + len;
        return 0;
    }
    default: /* groups (3, 4) and invalid wire types */
        return DECLINE;
    }
}

static int utf8_ok(const uint8_t *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i + 8 <= n) { /* the common case: ASCII, eight bytes at a time */
        uint64_t w;
        memcpy(&w, s + i, 8);
        if (w & 0x8080808080808080ull) break;
        i += 8;
    }
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80) return 0;
            i += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (i + 2 >= n || (s[i + 1] & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80) return 0;
            if (c == 0xE0 && s[i + 1] < 0xA0) return 0; /* overlong */
            if (c == 0xED && s[i + 1] >= 0xA0) return 0; /* surrogate */
            i += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (i + 3 >= n || (s[i + 1] & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80 ||
                (s[i + 3] & 0xC0) != 0x80)
                return 0;
            if (c == 0xF0 && s[i + 1] < 0x90) return 0; /* overlong */
            if (c == 0xF4 && s[i + 1] >= 0x90) return 0; /* above U+10FFFF */
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

static int wire_of(int kind) {
    switch (kind) {
    case K_VARINT: return 0;
    case K_FIXED64: return 1;
    case K_FIXED32: return 5;
    default: return 2;
    }
}

static int validate_msg(int type, const uint8_t *p, const uint8_t *end, int depth);

/* Check one field of `type` against the schema: its wire type, its string, its sub-message. */
static int check_field(int type, const Field *f, int depth) {
    if (f->fieldno >= MAX_FIELDNO) return high_fields[type] ? DECLINE : 0; /* unknown: kept by upb */
    const FieldSpec *spec = &schema[type][f->fieldno];
    if (spec->kind == K_NONE) return 0; /* an unknown field: upb keeps it, nothing to check */
    if (wire_of(spec->kind) != f->wt) return DECLINE;
    if (spec->repeated && spec->kind != K_STRING && spec->kind != K_BYTES && spec->kind != K_MESSAGE)
        return DECLINE; /* packed scalars: none in OTLP traces; not mirrored */
    if (spec->kind == K_STRING) return utf8_ok(f->val, f->len) ? 0 : DECLINE;
    if (spec->kind == K_MESSAGE) return validate_msg(spec->sub, f->val, f->val + f->len, depth + 1);
    return 0;
}

static int validate_msg(int type, const uint8_t *p, const uint8_t *end, int depth) {
    if (depth > MAX_DEPTH) return DECLINE;
    Field f;
    while (p < end) {
        if (next_field(&p, end, &f) < 0 || check_field(type, &f, depth) < 0) return DECLINE;
    }
    return 0;
}

/* A singular field of a message we read appears twice: upb merges or overwrites; not mirrored. */
static int once(uint64_t *seen, const Field *f, int type) {
    if (f->fieldno >= MAX_FIELDNO) return 0;
    if (schema[type][f->fieldno].repeated) return 0;
    uint64_t bit = (uint64_t)1 << f->fieldno;
    if (*seen & bit) return DECLINE;
    *seen |= bit;
    return 0;
}

/* --- the key table ------------------------------------------------------ */

/* Keys are compared in full by lookup(); the hash only spreads them: length, and the first and
   last eight bytes, so a long key costs no more than a short one. */
static uint32_t hash_key(const uint8_t *s, Py_ssize_t n) {
    uint64_t head = 0, tail = 0;
    memcpy(&head, s, n < 8 ? (size_t)n : 8);
    if (n > 8) memcpy(&tail, s + n - 8, 8);
    uint64_t h = (head * 0x9E3779B97F4A7C15ull) ^ (tail * 0xC2B2AE3D27D4EB4Full) ^ (uint64_t)n;
    return (uint32_t)(h ^ (h >> 29) ^ (h >> 43));
}

static const Entry *lookup(const uint8_t *s, Py_ssize_t n) {
    uint32_t i = hash_key(s, n) & (TABLE_SIZE - 1);
    while (table[i].key != NULL) {
        if (table[i].len == n && memcmp(table[i].key, s, n) == 0) return &table[i];
        i = (i + 1) & (TABLE_SIZE - 1);
    }
    return NULL;
}

/* --- short ASCII strings, shared ----------------------------------------- */

/* Label values repeat from span to span (operation, provider, model, agent, task names): one str
   object per distinct short ASCII value, kept in a small direct-mapped table, saves decoding and
   allocating it again, and its hash, computed once, is reused by every dict it is looked up in.
   str is immutable, so sharing it changes nothing a reader can see. */
#define INTERN_SIZE 1024
#define INTERN_MAX_LEN 64
static PyObject *interned[INTERN_SIZE];

static PyObject *short_str(const uint8_t *s, Py_ssize_t n) {
    if (n > INTERN_MAX_LEN) return PyUnicode_DecodeUTF8((const char *)s, n, "strict");
    for (Py_ssize_t i = 0; i < n; i++)
        if (s[i] >= 0x80) return PyUnicode_DecodeUTF8((const char *)s, n, "strict");
    uint32_t h = hash_key(s, n) & (INTERN_SIZE - 1);
    PyObject *cached = interned[h];
    if (cached != NULL && PyUnicode_GET_LENGTH(cached) == n && memcmp(PyUnicode_DATA(cached), s, n) == 0) {
        Py_INCREF(cached);
        return cached;
    }
    PyObject *fresh = PyUnicode_DecodeASCII((const char *)s, n, "strict");
    if (fresh == NULL) return NULL;
    Py_INCREF(fresh);
    Py_XSETREF(interned[h], fresh);
    return fresh;
}

/* --- the messages we read ----------------------------------------------- */

typedef struct {
    const uint8_t *key;
    Py_ssize_t key_len;
    const uint8_t *val;
    Py_ssize_t val_len;
    int has_value;
} KV;

static int read_kv(const uint8_t *p, const uint8_t *end, int depth, KV *kv) {
    Field f;
    uint64_t seen = 0;
    kv->key = (const uint8_t *)"";
    kv->key_len = 0;
    kv->has_value = 0;
    if (depth > MAX_DEPTH) return DECLINE;
    while (p < end) {
        if (next_field(&p, end, &f) < 0 || once(&seen, &f, T_KV) < 0) return DECLINE;
        if (f.fieldno == 1 && f.wt == 2) {
            if (!utf8_ok(f.val, f.len)) return DECLINE;
            kv->key = f.val;
            kv->key_len = f.len;
        } else if (f.fieldno == 2 && f.wt == 2) {
            kv->val = f.val;
            kv->val_len = f.len;
            kv->has_value = 1;
        } else if (check_field(T_KV, &f, depth) < 0) {
            return DECLINE;
        }
    }
    return 0;
}

/* The AnyValue's one set member as Python reads it (None when unset: `unset`), or a decline for
   members not mirrored (array, kvlist, anything but the five scalars). */
static int read_any(const uint8_t *p, const uint8_t *end, int depth, PyObject *unset, PyObject **out) {
    Field f;
    PyObject *value = NULL;
    if (depth > MAX_DEPTH) return DECLINE;
    while (p < end) {
        if (next_field(&p, end, &f) < 0) goto decline;
        int member = f.fieldno >= 1 && f.fieldno <= 8 && schema[T_ANY][f.fieldno].kind != K_NONE;
        if (!member) {
            if (check_field(T_ANY, &f, depth) < 0) goto decline;
            continue;
        }
        if (value != NULL) goto decline; /* a second member: upb keeps the last; not mirrored */
        if (wire_of(schema[T_ANY][f.fieldno].kind) != f.wt) goto decline;
        switch (f.fieldno) {
        case 1:
            if (!utf8_ok(f.val, f.len)) goto decline;
            value = short_str(f.val, f.len);
            break;
        case 2:
            value = PyBool_FromLong(f.num != 0);
            break;
        case 3:
            value = PyLong_FromLongLong((long long)(int64_t)f.num);
            break;
        case 4: {
            double d;
            memcpy(&d, &f.num, 8);
            value = PyFloat_FromDouble(d);
            break;
        }
        case 7:
            value = PyBytes_FromStringAndSize((const char *)f.val, f.len);
            break;
        default:
            goto decline;
        }
        if (value == NULL) return PYERR;
    }
    if (value == NULL) {
        Py_INCREF(unset);
        value = unset;
    }
    *out = value;
    return 0;
decline:
    Py_XDECREF(value);
    return DECLINE;
}

/* The resource's attribution attributes (and the fallback key's, when given), or NULL for none. */
static int read_resource(const uint8_t *p, const uint8_t *end, int depth, const char *fallback,
                         Py_ssize_t fallback_len, PyObject **out) {
    Field f;
    KV kv;
    PyObject *found = NULL;
    PyObject *empty = PyUnicode_FromStringAndSize("", 0);
    if (empty == NULL) return PYERR;
    int rc = 0;
    while (p < end && rc == 0) {
        if (next_field(&p, end, &f) < 0) {
            rc = DECLINE;
        } else if (f.fieldno == 1 && f.wt == 2) {
            if (read_kv(f.val, f.val + f.len, depth + 1, &kv) < 0) {
                rc = DECLINE;
                break;
            }
            const Entry *e = lookup(kv.key, kv.key_len);
            int is_fallback = fallback != NULL && kv.key_len == fallback_len &&
                              memcmp(kv.key, fallback, (size_t)fallback_len) == 0;
            if (!is_fallback && (e == NULL || !(e->flags & F_ATTRIBUTION))) {
                if (kv.has_value && validate_msg(T_ANY, kv.val, kv.val + kv.val_len, depth + 2) < 0)
                    rc = DECLINE;
                continue;
            }
            PyObject *value;
            if (kv.has_value) {
                rc = read_any(kv.val, kv.val + kv.val_len, depth + 2, empty, &value);
                if (rc < 0) break;
            } else {
                Py_INCREF(empty);
                value = empty;
            }
            PyObject *key = PyUnicode_DecodeUTF8((const char *)kv.key, kv.key_len, "strict");
            if (found == NULL) found = PyDict_New();
            if (key == NULL || found == NULL || PyDict_SetItem(found, key, value) < 0) rc = PYERR;
            Py_XDECREF(key);
            Py_DECREF(value);
        } else if (check_field(T_RES, &f, depth) < 0) {
            rc = DECLINE;
        }
    }
    Py_DECREF(empty);
    if (rc < 0) {
        Py_XDECREF(found);
        return rc;
    }
    *out = found; /* NULL: no attribution key */
    return 0;
}

/* int.from_bytes(b, "big"), any length */
static PyObject *big_endian_int(const uint8_t *b, Py_ssize_t n) {
    if (n <= 8) {
        uint64_t v = 0;
        for (Py_ssize_t i = 0; i < n; i++) v = (v << 8) | b[i];
        return PyLong_FromUnsignedLongLong(v);
    }
#if PY_VERSION_HEX >= 0x030D0000
    return PyLong_FromUnsignedNativeBytes(b, (size_t)n, Py_ASNATIVEBYTES_BIG_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER);
#else
    return _PyLong_FromByteArray(b, (size_t)n, 0, 0);
#endif
}

typedef struct {
    PyObject *hits;
    PyObject *scopes;
    PyObject *resources;
    Py_ssize_t n_spans;
    Py_ssize_t n_events; /* span events seen (the guard's decisions travel as events: read in Python) */
    const char *fallback; /* the resource attribute naming the agent last (NULL: none) */
    Py_ssize_t fallback_len;
} Out;

/* extract._label(value), taking the reference to `value`: a str cut to max_label code points (""
   is None), an int or float as its str() cut the same way, anything else (bool, bytes, None) None.
   The Python side applies _label again to what it reads from here: the rule is idempotent. */
static PyObject *as_label(PyObject *value) {
    PyObject *text;
    if (PyUnicode_CheckExact(value)) {
        text = value;
    } else if ((PyLong_CheckExact(value) || PyFloat_CheckExact(value))) {
        text = PyObject_Str(value);
        Py_DECREF(value);
        if (text == NULL) return NULL;
    } else {
        Py_DECREF(value);
        Py_RETURN_NONE;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (n == 0) {
        Py_DECREF(text);
        Py_RETURN_NONE;
    }
    if (n <= max_label) return text;
    PyObject *cut = PyUnicode_Substring(text, 0, max_label);
    Py_DECREF(text);
    return cut;
}

static int read_span(const uint8_t *p, const uint8_t *end, int depth, Py_ssize_t scope, Out *out) {
    Field f;
    KV kv;
    uint64_t seen = 0;
    PyObject *vals[MAX_SLOTS] = {NULL};
    int ranks[MAX_SLOTS];
    int found = 0, rc = 0;
    const uint8_t *ids[3] = {(const uint8_t *)"", (const uint8_t *)"", (const uint8_t *)""};
    Py_ssize_t id_len[3] = {0, 0, 0};
    uint64_t start = 0, stop = 0, code = 0;
    for (int i = 0; i < n_slots; i++) ranks[i] = no_rank;
    if (depth > MAX_DEPTH) return DECLINE;
    while (p < end && rc == 0) {
        if (next_field(&p, end, &f) < 0 || once(&seen, &f, T_SPAN) < 0) {
            rc = DECLINE;
            break;
        }
        int expected = f.fieldno < MAX_FIELDNO && wire_of(schema[T_SPAN][f.fieldno].kind) == f.wt;
        if (!expected) {
            rc = check_field(T_SPAN, &f, depth);
            continue;
        }
        switch (f.fieldno) {
        case 1: case 2: case 4: {
            int i = f.fieldno == 4 ? 2 : (int)f.fieldno - 1;
            ids[i] = f.val;
            id_len[i] = f.len;
            break;
        }
        case 7: start = f.num; break;
        case 8: stop = f.num; break;
        case 9: {
            if (read_kv(f.val, f.val + f.len, depth + 1, &kv) < 0) {
                rc = DECLINE;
                break;
            }
            const Entry *e = lookup(kv.key, kv.key_len);
            if (e != NULL && (e->flags & F_ARRAY)) {
                rc = DECLINE; /* the slot holds a message object in Python: not mirrored */
            } else if (e != NULL && e->rank < ranks[e->slot]) {
                PyObject *value;
                found = 1;
                if (kv.has_value) {
                    rc = read_any(kv.val, kv.val + kv.val_len, depth + 2, Py_None, &value);
                    if (rc < 0) break;
                    if (e->flags & F_LABEL) {
                        value = as_label(value);
                        if (value == NULL) {
                            rc = PYERR;
                            break;
                        }
                    }
                } else {
                    Py_INCREF(Py_None);
                    value = Py_None;
                }
                Py_XSETREF(vals[e->slot], value);
                ranks[e->slot] = e->rank;
            } else {
                found |= e != NULL;
                if (kv.has_value && validate_msg(T_ANY, kv.val, kv.val + kv.val_len, depth + 2) < 0)
                    rc = DECLINE;
            }
            break;
        }
        case 15: {
            const uint8_t *q = f.val, *qend = f.val + f.len;
            Field g;
            uint64_t seen_status = 0;
            if (depth + 1 > MAX_DEPTH) {
                rc = DECLINE;
                break;
            }
            while (q < qend && rc == 0) {
                if (next_field(&q, qend, &g) < 0 || once(&seen_status, &g, T_STATUS) < 0)
                    rc = DECLINE;
                else if (g.fieldno == 3 && g.wt == 0)
                    code = g.num;
                else
                    rc = check_field(T_STATUS, &g, depth + 1);
            }
            break;
        }
        case 11:
            out->n_events++;
            rc = check_field(T_SPAN, &f, depth);
            break;
        default:
            rc = check_field(T_SPAN, &f, depth);
        }
    }
    int usage = found && (ranks[slot_in] != no_rank || ranks[slot_out] != no_rank ||
                          ranks[slot_total] != no_rank || vals[slot_task_scope] == Py_True ||
                          (vals[slot_verify] != NULL && PyBool_Check(vals[slot_verify])));
    if (rc == 0 && usage) {
        /* ranks as bytes: read by index as ints like the Python walk's list; one object, not GC-tracked */
        PyObject *vlist = PyList_New(n_slots), *rlist = PyBytes_FromStringAndSize(NULL, n_slots), *hit = NULL;
        if (vlist != NULL && rlist != NULL) {
            for (int i = 0; i < n_slots; i++) {
                PyObject *v = vals[i] != NULL ? vals[i] : Py_None;
                Py_INCREF(v);
                PyList_SET_ITEM(vlist, i, v);
                PyBytes_AS_STRING(rlist)[i] = (char)(unsigned char)ranks[i];
            }
            PyObject *trace = big_endian_int(ids[0], id_len[0]), *span = big_endian_int(ids[1], id_len[1]),
                     *parent = big_endian_int(ids[2], id_len[2]);
            if (trace != NULL && span != NULL && parent != NULL)
                hit = Py_BuildValue("(nOOOOOKKi)", scope, vlist, rlist, trace, span, parent,
                                    (unsigned long long)start, (unsigned long long)stop,
                                    (int)(int32_t)(uint32_t)code);
            Py_XDECREF(trace);
            Py_XDECREF(span);
            Py_XDECREF(parent);
        }
        if (hit == NULL || PyList_Append(out->hits, hit) < 0) rc = PYERR;
        Py_XDECREF(vlist);
        Py_XDECREF(rlist);
        Py_XDECREF(hit);
    }
    for (int i = 0; i < n_slots; i++) Py_XDECREF(vals[i]);
    return rc;
}

static int read_scope_name(const uint8_t *p, const uint8_t *end, int depth, PyObject **name) {
    Field f;
    uint64_t seen = 0;
    const uint8_t *s = (const uint8_t *)"";
    Py_ssize_t n = 0;
    if (depth > MAX_DEPTH) return DECLINE;
    while (p < end) {
        if (next_field(&p, end, &f) < 0 || once(&seen, &f, T_SCOPE) < 0) return DECLINE;
        if (f.fieldno == 1 && f.wt == 2) {
            if (!utf8_ok(f.val, f.len)) return DECLINE;
            s = f.val;
            n = f.len;
        } else if (check_field(T_SCOPE, &f, depth) < 0) {
            return DECLINE;
        }
    }
    *name = PyUnicode_DecodeUTF8((const char *)s, n, "strict");
    return *name == NULL ? PYERR : 0;
}

static int read_scope_spans(const uint8_t *p, const uint8_t *end, int depth, Py_ssize_t rs, Out *out) {
    Field f;
    uint64_t seen = 0;
    Py_ssize_t index = PyList_GET_SIZE(out->scopes);
    PyObject *entry = Py_BuildValue("[ns]", rs, "");
    if (entry == NULL || PyList_Append(out->scopes, entry) < 0) {
        Py_XDECREF(entry);
        return PYERR;
    }
    Py_DECREF(entry);
    if (depth > MAX_DEPTH) return DECLINE;
    while (p < end) {
        if (next_field(&p, end, &f) < 0 || once(&seen, &f, T_SS) < 0) return DECLINE;
        int rc;
        if (f.fieldno == 1 && f.wt == 2) {
            PyObject *name;
            rc = read_scope_name(f.val, f.val + f.len, depth + 1, &name);
            if (rc == 0) PyList_SetItem(entry, 1, name); /* steals name; entry still owned by scopes */
        } else if (f.fieldno == 2 && f.wt == 2) {
            out->n_spans++;
            rc = read_span(f.val, f.val + f.len, depth + 1, index, out);
        } else {
            rc = check_field(T_SS, &f, depth);
        }
        if (rc < 0) return rc;
    }
    return 0;
}

static int read_resource_spans(const uint8_t *p, const uint8_t *end, int depth, Out *out) {
    Field f;
    uint64_t seen = 0;
    Py_ssize_t index = PyList_GET_SIZE(out->resources);
    if (PyList_Append(out->resources, Py_None) < 0) return PYERR;
    if (depth > MAX_DEPTH) return DECLINE;
    while (p < end) {
        if (next_field(&p, end, &f) < 0 || once(&seen, &f, T_RS) < 0) return DECLINE;
        int rc;
        if (f.fieldno == 1 && f.wt == 2) {
            PyObject *found = NULL;
            rc = read_resource(f.val, f.val + f.len, depth + 1, out->fallback, out->fallback_len, &found);
            if (rc == 0 && found != NULL) PyList_SetItem(out->resources, index, found); /* steals */
        } else if (f.fieldno == 2 && f.wt == 2) {
            rc = read_scope_spans(f.val, f.val + f.len, depth + 1, index, out);
        } else {
            rc = check_field(T_RS, &f, depth);
        }
        if (rc < 0) return rc;
    }
    return 0;
}

/* --- the module --------------------------------------------------------- */

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *arg;
    const char *fallback = NULL;
    Py_ssize_t fallback_len = 0;
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "_otlp_scan.configure() was not called");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O|z#", &arg, &fallback, &fallback_len)) return NULL;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0) return NULL;
    Out out = {PyList_New(0), PyList_New(0), PyList_New(0), 0, 0, fallback, fallback_len};
    PyObject *result = NULL;
    int rc = (out.hits && out.scopes && out.resources) ? 0 : PYERR;
    const uint8_t *p = buf.buf, *end = p + buf.len;
    Field f;
    while (rc == 0 && p < end) {
        if (next_field(&p, end, &f) < 0)
            rc = DECLINE;
        else if (f.fieldno == 1 && f.wt == 2)
            rc = read_resource_spans(f.val, f.val + f.len, 1, &out);
        else
            rc = check_field(T_REQ, &f, 0);
    }
    PyBuffer_Release(&buf);
    if (rc == 0) {
        result = Py_BuildValue("(nOOOn)", out.n_spans, out.resources, out.scopes, out.hits, out.n_events);
    } else if (rc == DECLINE) {
        Py_INCREF(Py_None);
        result = Py_None;
    }
    Py_XDECREF(out.hits);
    Py_XDECREF(out.scopes);
    Py_XDECREF(out.resources);
    return result;
}

/* --- links(): the parent links the ancestor walk needs --------------------- */

typedef struct {
    PyObject *traces; /* a set of trace ids: only their spans are listed */
    const char *keys[3]; /* gen_ai.operation.name, gen_ai.agent.name, gen_ai.workflow.name */
    Py_ssize_t key_lens[3];
    PyObject *links;  /* span key -> parent key (ancestry.span_key) */
    PyObject *scoped; /* (span key, operation, agent, workflow) of spans naming an operation */
    PyObject *operations; /* NULL, or a set: only spans naming one of these operations get a row */
} Links;

/* ancestry.span_key(int.from_bytes(trace, "big"), int.from_bytes(span, "big")): (trace << 64) | span,
   from the bytes at once when they fit in 24, else by Python's int arithmetic. */
static PyObject *span_key_of(const uint8_t *trace, Py_ssize_t tn, const uint8_t *span, Py_ssize_t sn) {
    if (tn <= 16 && sn <= 8) {
        uint8_t buf[24] = {0};
        memcpy(buf + 16 - tn, trace, (size_t)tn);
        memcpy(buf + 24 - sn, span, (size_t)sn);
        return big_endian_int(buf, 24);
    }
    PyObject *t = big_endian_int(trace, tn), *s = big_endian_int(span, sn), *n64 = PyLong_FromLong(64);
    PyObject *shifted = (t && s && n64) ? PyNumber_Lshift(t, n64) : NULL;
    PyObject *key = shifted ? PyNumber_Or(shifted, s) : NULL;
    Py_XDECREF(t);
    Py_XDECREF(s);
    Py_XDECREF(n64);
    Py_XDECREF(shifted);
    return key;
}

static int link_span(const uint8_t *p, const uint8_t *end, int depth, Links *out) {
    Field f;
    KV kv;
    PyObject *values[3] = {NULL, NULL, NULL};
    const uint8_t *ids[3] = {(const uint8_t *)"", (const uint8_t *)"", (const uint8_t *)""};
    Py_ssize_t id_len[3] = {0, 0, 0};
    int rc = depth > MAX_DEPTH ? DECLINE : 0;
    while (rc == 0 && p < end) {
        if (next_field(&p, end, &f) < 0) {
            rc = DECLINE;
        } else if ((f.fieldno == 1 || f.fieldno == 2 || f.fieldno == 4) && f.wt == 2) {
            int i = f.fieldno == 4 ? 2 : (int)f.fieldno - 1;
            ids[i] = f.val;
            id_len[i] = f.len;
        } else if (f.fieldno == 9 && f.wt == 2) {
            if (read_kv(f.val, f.val + f.len, depth + 1, &kv) < 0) {
                rc = DECLINE;
                break;
            }
            for (int k = 0; k < 3; k++) {
                if (kv.key_len != out->key_lens[k] || memcmp(kv.key, out->keys[k], (size_t)kv.key_len) != 0)
                    continue;
                PyObject *value = NULL;
                if (kv.has_value) {
                    rc = read_any(kv.val, kv.val + kv.val_len, depth + 2, Py_None, &value);
                } else {
                    Py_INCREF(Py_None);
                    value = Py_None;
                }
                if (rc == 0) Py_XSETREF(values[k], value); /* the last one, as a dict keeps it */
                break;
            }
        }
    }
    if (rc == 0) {
        PyObject *trace = big_endian_int(ids[0], id_len[0]);
        int wanted = trace != NULL ? PySet_Contains(out->traces, trace) : -1;
        if (wanted > 0) {
            PyObject *key = span_key_of(ids[0], id_len[0], ids[1], id_len[1]);
            PyObject *parent = span_key_of(ids[0], id_len[0], ids[2], id_len[2]);
            if (key == NULL || parent == NULL || PyDict_SetItem(out->links, key, parent) < 0) rc = PYERR;
            PyObject *op = values[0];
            int listed = 1; /* a row is wanted (every non-empty operation when no set is given) */
            if (rc == 0 && op != NULL && PyUnicode_Check(op) && PyUnicode_GET_LENGTH(op) > 0 &&
                out->operations != NULL) {
                listed = PySet_Contains(out->operations, op);
                if (listed < 0) rc = PYERR;
            }
            if (rc == 0 && listed > 0 && op != NULL && PyUnicode_Check(op) && PyUnicode_GET_LENGTH(op) > 0) {
                PyObject *row = Py_BuildValue("(OOOO)", key, op, values[1] ? values[1] : Py_None,
                                              values[2] ? values[2] : Py_None);
                if (row == NULL || PyList_Append(out->scoped, row) < 0) rc = PYERR;
                Py_XDECREF(row);
            }
            Py_XDECREF(key);
            Py_XDECREF(parent);
        } else if (wanted < 0) {
            rc = PYERR;
        }
        Py_XDECREF(trace);
    }
    for (int k = 0; k < 3; k++) Py_XDECREF(values[k]);
    return rc;
}

/* Each length-delimited field numbered path[0] of the message in [p, end): descended into along
   the rest of `path` (0-terminated), or, at its last number, read as a span. */
static int link_level(const uint8_t *p, const uint8_t *end, int depth, const int *path, Links *out) {
    Field f;
    if (depth > MAX_DEPTH) return DECLINE;
    while (p < end) {
        if (next_field(&p, end, &f) < 0) return DECLINE;
        if (f.fieldno != (uint32_t)path[0] || f.wt != 2) continue;
        int rc = path[1] == 0 ? link_span(f.val, f.val + f.len, depth + 1, out)
                              : link_level(f.val, f.val + f.len, depth + 1, path + 1, out);
        if (rc < 0) return rc;
    }
    return 0;
}

/* links(data, traces, (operation key, agent key, workflow key)[, operations]) -> ({span key: parent key},
   [(span key, operation, agent, workflow)]) for the spans of `traces` (keys as ancestry.span_key makes
   them; the rows only for spans whose operation is a non-empty str — and one of `operations`, a set
   or frozenset, when given: the rest (every chat span) would be skipped in Python, a row each — each
   value the attribute's scalar as read_any reads it, None when absent or unset), or None to decline.
   Only for data scan() accepted. */
static PyObject *links(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Links out = {NULL, {NULL, NULL, NULL}, {0, 0, 0}, NULL, NULL, NULL};
    if (!PyArg_ParseTuple(args, "y*O!(s#s#s#)|O", &buf, &PySet_Type, &out.traces, &out.keys[0], &out.key_lens[0],
                          &out.keys[1], &out.key_lens[1], &out.keys[2], &out.key_lens[2], &out.operations))
        return NULL;
    if (out.operations == Py_None) {
        out.operations = NULL;
    } else if (out.operations != NULL && !PyAnySet_Check(out.operations)) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_TypeError, "links(): operations must be a set or frozenset");
        return NULL;
    }
    static const int path[] = {1, 2, 2, 0}; /* resource_spans > scope_spans > spans */
    out.links = PyDict_New();
    out.scoped = PyList_New(0);
    int rc = out.links == NULL || out.scoped == NULL
                 ? PYERR
                 : link_level(buf.buf, (const uint8_t *)buf.buf + buf.len, 0, path, &out);
    PyBuffer_Release(&buf);
    PyObject *result = NULL;
    if (rc == 0) {
        result = PyTuple_Pack(2, out.links, out.scoped);
    } else if (rc == DECLINE) {
        Py_INCREF(Py_None);
        result = Py_None;
    }
    Py_XDECREF(out.links);
    Py_XDECREF(out.scoped);
    return result;
}

/* --- prices: a compiled price set (pricing._Rates), priced as its generated `fast` prices ------ */

/* pricing._Rates.fast, in C: the same integer leaves and the same float operations in the same
   order (a product of the rate and the leaf converted to double, added to a running total that
   starts at 0.0), so the result is bit-identical. The build is -std=c99, where GCC does not fuse a
   multiply and an add (-ffp-contract=off); clang is told so below. tests/test_price_table.py holds
   the two equal over random counts of every price set genai-prices has. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif
#define N_COUNTS 6 /* pricing._REPORTED_KEYS */
#define MAX_REGIMES 16
#define MAX_TERMS 32
#define MAX_COEF (1LL << 20) /* leaves stay far from overflow: counts are at most 2**40 here */
#define MAX_COUNT (1LL << 40)
typedef struct {
    int n_coefs;
    int index[N_COUNTS];
    long long coef[N_COUNTS];
    long long constant;
    double rate[MAX_REGIMES];
} Term;
typedef struct {
    int n_thresholds, n_terms;
    long long thresholds[MAX_REGIMES - 1];
    int used[N_COUNTS]; /* the counts some term reads: only those are clamped at zero */
    Term term[MAX_TERMS];
} Linear;
static const char LINEAR_NAME[] = "otel_tokens._otlp_scan.Linear";

static void free_linear(PyObject *capsule) { PyMem_Free(PyCapsule_GetPointer(capsule, LINEAR_NAME)); }

static double linear_cost(const Linear *l, long long c[N_COUNTS]) {
    for (int i = 0; i < N_COUNTS; i++)
        if (l->used[i] && c[i] < 0) c[i] = 0;
    int regime = 0; /* bisect_left(thresholds, c[0]): how many thresholds lie below it */
    while (regime < l->n_thresholds && l->thresholds[regime] < c[0]) regime++;
    double total = 0.0;
    for (int t = 0; t < l->n_terms; t++) {
        const Term *term = &l->term[t];
        long long leaf = term->constant;
        for (int k = 0; k < term->n_coefs; k++) leaf += term->coef[k] * c[term->index[k]];
        if (leaf > 0) total += term->rate[regime] * (double)leaf;
    }
    return total;
}

/* A Python int in [-limit, limit] into *out, else 0 (with no error set). */
static int bounded_ll(PyObject *v, long long limit, long long *out) {
    if (!PyLong_Check(v)) return 0;
    int overflow = 0;
    long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (n == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (overflow || n < -limit || n > limit) return 0;
    *out = n;
    return 1;
}

static int read_term(PyObject *spec, int n_regimes, Term *term, int used[N_COUNTS]) {
    PyObject *coefs, *constant, *rates;
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 3) return 0;
    coefs = PyTuple_GET_ITEM(spec, 0), constant = PyTuple_GET_ITEM(spec, 1), rates = PyTuple_GET_ITEM(spec, 2);
    if (!PyTuple_Check(coefs) || PyTuple_GET_SIZE(coefs) > N_COUNTS || !PyTuple_Check(rates) ||
        PyTuple_GET_SIZE(rates) != n_regimes || !bounded_ll(constant, MAX_COEF, &term->constant))
        return 0;
    term->n_coefs = (int)PyTuple_GET_SIZE(coefs);
    for (int k = 0; k < term->n_coefs; k++) {
        PyObject *pair = PyTuple_GET_ITEM(coefs, k);
        long long index;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !bounded_ll(PyTuple_GET_ITEM(pair, 0), N_COUNTS, &index) || index < 0 || index >= N_COUNTS ||
            !bounded_ll(PyTuple_GET_ITEM(pair, 1), MAX_COEF, &term->coef[k]))
            return 0;
        term->index[k] = (int)index;
        used[index] = 1;
    }
    for (int r = 0; r < n_regimes; r++) {
        PyObject *rate = PyTuple_GET_ITEM(rates, r);
        if (!PyFloat_CheckExact(rate)) return 0;
        term->rate[r] = PyFloat_AS_DOUBLE(rate);
    }
    return 1;
}

/* linear(thresholds, terms) -> the price set compiled for build(), or None when it has a shape
   this code does not take (then records of it are priced in Python): terms is a tuple of (coefs:
   ((count index, coefficient), ...), constant, rates by regime: floats), as pricing._Term. */
static PyObject *linear(PyObject *self, PyObject *args) {
    PyObject *thresholds, *terms;
    if (!PyArg_ParseTuple(args, "O!O!", &PyTuple_Type, &thresholds, &PyTuple_Type, &terms)) return NULL;
    if (PyTuple_GET_SIZE(thresholds) >= MAX_REGIMES || PyTuple_GET_SIZE(terms) > MAX_TERMS) Py_RETURN_NONE;
    Linear *l = PyMem_Calloc(1, sizeof(Linear));
    if (l == NULL) return PyErr_NoMemory();
    l->n_thresholds = (int)PyTuple_GET_SIZE(thresholds);
    l->n_terms = (int)PyTuple_GET_SIZE(terms);
    int ok = 1;
    for (int i = 0; ok && i < l->n_thresholds; i++)
        ok = bounded_ll(PyTuple_GET_ITEM(thresholds, i), LLONG_MAX, &l->thresholds[i]);
    for (int t = 0; ok && t < l->n_terms; t++)
        ok = read_term(PyTuple_GET_ITEM(terms, t), l->n_thresholds + 1, &l->term[t], l->used);
    if (!ok) {
        PyMem_Free(l);
        Py_RETURN_NONE;
    }
    PyObject *capsule = PyCapsule_New(l, LINEAR_NAME, free_linear);
    if (capsule == NULL) PyMem_Free(l);
    return capsule;
}

/* price(linear, counts) -> float: what build() prices a record of that price set with (for tests,
   which hold it equal to pricing._Rates.fast); counts: six ints of magnitude at most 2**40. */
static PyObject *price(PyObject *self, PyObject *args) {
    PyObject *capsule, *counts;
    if (!PyArg_ParseTuple(args, "OO!", &capsule, &PyTuple_Type, &counts)) return NULL;
    const Linear *l = PyCapsule_GetPointer(capsule, LINEAR_NAME);
    if (l == NULL) return NULL;
    long long c[N_COUNTS];
    if (PyTuple_GET_SIZE(counts) != N_COUNTS) {
        PyErr_SetString(PyExc_ValueError, "price: six counts expected");
        return NULL;
    }
    for (int i = 0; i < N_COUNTS; i++)
        if (!bounded_ll(PyTuple_GET_ITEM(counts, i), MAX_COUNT, &c[i])) {
            PyErr_SetString(PyExc_ValueError, "price: counts are ints of magnitude at most 2**40");
            return NULL;
        }
    return PyFloat_FromDouble(linear_cost(l, c));
}

/* --- build(): usage records from scan()'s hits, for the plain case ----------------------- */

/* What build() needs of the extractor (configure_records): the record classes, the slots it reads
   and the bounds it checks. Every hit build() cannot prove plain is left for extract._record. */
static PyObject *record_type, *tokens_type, *attribution_type, *str_unknown, *str_chat, *str_ok, *str_error,
    *str_lower, *empty_tuple, *zero;
enum { S_IN, S_OUT, S_CACHE_READ, S_CACHE_WRITE, S_REASONING, S_TOTAL, S_REQUEST_MODEL, S_COST, S_ESTIMATED,
       S_MARKER, S_ERROR_TYPE, S_TASK_SCOPE, S_CACHE_WRITE_1H, S_SERVICE_TIER, S_ENRICHMENT_FAILED,
       S_VERIFY_PASSED, N_BUILD_SLOTS };
static int build_slot[N_BUILD_SLOTS];
static long long max_tokens = 0;
static double max_cost = 0.0;
static int records_configured = 0;
#define R_COST 6 /* UsageRecord's cost_usd field, in accelerator._RECORD_FIELDS order */
#define N_WHO 7 /* Attribution's fields, in order: the slots after the four model/provider/operation ones */

/* The record classes are slotted dataclasses whose __init__ only stores its arguments: build() makes
   them as that __init__ would, without calling it (a Python function: most of build()'s time),
   storing each field in its slot. The slots' offsets come from their member descriptors, checked
   in configure_records to be plain object slots. */
#define MAX_FIELDS 24
typedef struct {
    PyTypeObject *type;
    int n;
    Py_ssize_t offset[MAX_FIELDS];
} Layout;
static Layout record_layout, tokens_layout, attribution_layout;

static int layout_of(PyObject *cls, PyObject *names, Layout *out) {
    if (!PyType_Check(cls) || !PyTuple_Check(names) || PyTuple_GET_SIZE(names) > MAX_FIELDS) return -1;
    out->type = (PyTypeObject *)cls;
    out->n = (int)PyTuple_GET_SIZE(names);
    for (int i = 0; i < out->n; i++) {
        PyObject *descr = PyObject_GetAttr(cls, PyTuple_GET_ITEM(names, i));
        if (descr == NULL) return -1;
        int ok = Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
                 ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX &&
                 !(((PyMemberDescrObject *)descr)->d_member->flags & READONLY);
        if (ok) out->offset[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
        Py_DECREF(descr);
        if (!ok) return -1;
    }
    return 0;
}

/* An instance of layout's class with its fields set to values (new references taken). */
static PyObject *make(const Layout *layout, PyObject *const *values) {
    PyObject *obj = layout->type->tp_alloc(layout->type, 0);
    if (obj == NULL) return NULL;
    for (int i = 0; i < layout->n; i++) *(PyObject **)((char *)obj + layout->offset[i]) = Py_NewRef(values[i]);
    return obj;
}

/* An exact int in [0, max_tokens] into *out; 0 when it is not one. */
static int plain_count(PyObject *v, long long *out) {
    if (!PyLong_CheckExact(v)) return 0;
    int overflow = 0;
    long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || n < 0 || n > max_tokens) {
        PyErr_Clear();
        return 0;
    }
    *out = n;
    return 1;
}

/* An optional count (None: 0) as plain_count judges it. */
static int plain_optional(PyObject *v, long long *out) {
    if (v == Py_None) {
        *out = 0;
        return 1;
    }
    return plain_count(v, out);
}

/* str.lower() of a label; the same object when it has nothing to lower (an ASCII str without
   capitals: most provider names), so its hash, once computed, is shared too. */
static PyObject *lowercase(PyObject *s) {
    if (PyUnicode_IS_ASCII(s)) {
        const Py_UCS1 *c = PyUnicode_1BYTE_DATA(s);
        Py_ssize_t i = 0, n = PyUnicode_GET_LENGTH(s);
        while (i < n && !(c[i] >= 'A' && c[i] <= 'Z')) i++;
        if (i == n) return Py_NewRef(s);
    }
    return PyObject_CallMethodNoArgs(s, str_lower);
}

/* The record's cost by the compiled price set `prices` holds for its price key (pricing.PriceKey:
   provider, request model, response model, service tier), a new float in *out; *out stays NULL
   when there is none (the caller prices the record in Python). -1 on error. */
static int price_of(PyObject *prices, PyObject *provider, PyObject *request_model, PyObject *response_model,
                    PyObject *tier, long long counts[N_COUNTS], PyObject **out) {
    PyObject *key = PyTuple_Pack(4, provider, request_model, response_model, tier);
    if (key == NULL) return -1;
    PyObject *found = PyDict_GetItemWithError(prices, key); /* borrowed */
    Py_DECREF(key);
    if (found == NULL) return PyErr_Occurred() ? -1 : 0;
    const Linear *l = PyCapsule_IsValid(found, LINEAR_NAME) ? PyCapsule_GetPointer(found, LINEAR_NAME) : NULL;
    if (l == NULL) return 0;
    *out = PyFloat_FromDouble(linear_cost(l, counts));
    return *out == NULL ? -1 : 0;
}

/* extract._record's result for a hit whose slots need none of its rare rules, or NULL with no error
   set when they might (the caller leaves the hit to Python); NULL with an error set on failure. */
static PyObject *plain_record(PyObject *hit, PyObject *resources, PyObject *ours, long long ceiling,
                              PyObject *prices) {
    if (!PyTuple_CheckExact(hit) || PyTuple_GET_SIZE(hit) != 9) return NULL;
    PyObject *vals = PyTuple_GET_ITEM(hit, 1);
    if (!PyList_CheckExact(vals) || PyList_GET_SIZE(vals) != n_slots) return NULL;
#define SLOT(i) PyList_GET_ITEM(vals, build_slot[i])
    if (SLOT(S_TASK_SCOPE) == Py_True || PyBool_Check(SLOT(S_VERIFY_PASSED))) return NULL;
    if (SLOT(S_TOTAL) != Py_None || SLOT(S_CACHE_WRITE_1H) != Py_None || SLOT(S_ERROR_TYPE) != Py_None ||
        SLOT(S_ENRICHMENT_FAILED) != Py_None)
        return NULL;
    PyObject *tier = SLOT(S_SERVICE_TIER); /* a label as it is, or left to _label */
    if (tier != Py_None && !(PyUnicode_CheckExact(tier) && PyUnicode_GET_LENGTH(tier) > 0 &&
                             PyUnicode_GET_LENGTH(tier) <= max_label))
        return NULL;
    long long in, out, read, write, reasoning;
    if (!plain_count(SLOT(S_IN), &in) || !plain_count(SLOT(S_OUT), &out) ||
        !plain_optional(SLOT(S_CACHE_READ), &read) || !plain_optional(SLOT(S_CACHE_WRITE), &write) ||
        !plain_optional(SLOT(S_REASONING), &reasoning))
        return NULL;
    if (in < read + write || out < reasoning || in + out > ceiling) return NULL;
    PyObject *cost = SLOT(S_COST);
    if (cost != Py_None) {
        if (!PyFloat_CheckExact(cost)) return NULL;
        double c = PyFloat_AS_DOUBLE(cost);
        if (!(c >= 0.0 && c <= max_cost)) return NULL; /* NaN fails too */
    }
    Py_ssize_t scope = PyLong_AsSsize_t(PyTuple_GET_ITEM(hit, 0));
    if (scope < 0 || scope >= PyList_GET_SIZE(resources) || scope >= PyList_GET_SIZE(ours)) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *inherited = PyList_GET_ITEM(resources, scope); /* a tuple of N_WHO values, or None */
    if (inherited != Py_None && (!PyTuple_CheckExact(inherited) || PyTuple_GET_SIZE(inherited) != N_WHO))
        return NULL;
    int base = build_slot[S_REQUEST_MODEL];
    PyObject *request_model = PyList_GET_ITEM(vals, base), *response_model = PyList_GET_ITEM(vals, base + 1),
             *provider = PyList_GET_ITEM(vals, base + 2), *operation = PyList_GET_ITEM(vals, base + 3);
    PyObject *who[N_WHO];
    int from_resource = 0;
    for (int i = 0; i < N_WHO; i++) {
        who[i] = PyList_GET_ITEM(vals, base + 4 + i);
        if (who[i] == Py_None && inherited != Py_None) who[i] = PyTuple_GET_ITEM(inherited, i);
    }
    if (inherited != Py_None)
        from_resource = PyList_GET_ITEM(vals, base + 4) == Py_None && PyTuple_GET_ITEM(inherited, 0) != Py_None;
    /* the labels are the walk's own (as_label): a str or None */
    PyObject *lowered = provider == Py_None ? Py_NewRef(str_unknown) : lowercase(provider);
    if (lowered == NULL) return NULL;
    if (request_model == Py_None) request_model = response_model != Py_None ? response_model : str_unknown;
    if (operation == Py_None) operation = str_chat;
    PyObject *priced = NULL; /* the cost build() computed (a new reference) */
    if (cost == Py_None && prices != NULL) {
        long long counts[N_COUNTS] = {in, out, read, write, reasoning, 0};
        if (price_of(prices, lowered, request_model, response_model, tier, counts, &priced) < 0) {
            Py_DECREF(lowered);
            return NULL;
        }
        if (priced != NULL) cost = priced;
    }
    PyObject *counts[6] = {SLOT(S_IN), SLOT(S_OUT), SLOT(S_CACHE_READ), SLOT(S_CACHE_WRITE), SLOT(S_REASONING),
                           zero}; /* the last: cache_write_1h */
    for (int i = 2; i < 5; i++)
        if (counts[i] == Py_None) counts[i] = zero;
    PyObject *tokens = make(&tokens_layout, counts);
    PyObject *attribution = tokens != NULL ? make(&attribution_layout, who) : NULL;
    PyObject *record = NULL;
    if (attribution != NULL) {
        PyObject *parent = PyTuple_GET_ITEM(hit, 5);
        int is_error = PyLong_AsLong(PyTuple_GET_ITEM(hit, 8)) == 2; /* STATUS_CODE_ERROR */
        int ours_scope = PyObject_IsTrue(PyList_GET_ITEM(ours, scope));
        PyObject *args[19] = {
            lowered, request_model, operation, response_model, tokens,
            SLOT(S_ESTIMATED) == Py_True ? Py_True : Py_False, cost, attribution,
            is_error ? str_error : str_ok, Py_None, PyTuple_GET_ITEM(hit, 3), PyTuple_GET_ITEM(hit, 4),
            PyObject_IsTrue(parent) ? parent : Py_None, PyTuple_GET_ITEM(hit, 6), PyTuple_GET_ITEM(hit, 7),
            (ours_scope > 0 || SLOT(S_MARKER) == Py_True) ? Py_True : Py_False, tier, empty_tuple,
            from_resource ? Py_True : Py_False,
        };
        if (!PyErr_Occurred()) record = make(&record_layout, args);
    }
#undef SLOT
    Py_DECREF(lowered);
    Py_XDECREF(priced);
    Py_XDECREF(tokens);
    Py_XDECREF(attribution);
    return record;
}

/* build(hits, resources, ours, ceiling, prices=None, unpriced=None) -> how many hits were replaced,
   in place, by their usage record: resources[scope] is the scope's resource attribution as a tuple
   of Attribution's fields (or None), ours[scope] whether the scope is otel-tokens' own, ceiling the
   extractor's max_tokens_per_call. A span without a cost is priced by the compiled price set
   prices (pricing.PriceTable.compiled) holds for the record's price key; without one its cost is
   None and the record is appended to unpriced, for the caller to price. */
static PyObject *build(PyObject *self, PyObject *args) {
    PyObject *hits, *resources, *ours, *prices = Py_None, *unpriced = Py_None;
    long long ceiling;
    if (!records_configured) {
        PyErr_SetString(PyExc_RuntimeError, "_otlp_scan.configure_records() was not called");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!O!O!L|OO", &PyList_Type, &hits, &PyList_Type, &resources, &PyList_Type, &ours,
                          &ceiling, &prices, &unpriced))
        return NULL;
    if ((prices != Py_None && !PyDict_CheckExact(prices)) || (unpriced != Py_None && !PyList_Check(unpriced))) {
        PyErr_SetString(PyExc_TypeError, "build: prices must be a dict or None, unpriced a list or None");
        return NULL;
    }
    Py_ssize_t built = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(hits); i++) {
        PyObject *record = plain_record(PyList_GET_ITEM(hits, i), resources, ours, ceiling,
                                        prices != Py_None ? prices : NULL);
        if (record == NULL) {
            if (PyErr_Occurred()) return NULL;
            continue;
        }
        if (unpriced != Py_None && *(PyObject **)((char *)record + record_layout.offset[R_COST]) == Py_None &&
            PyList_Append(unpriced, record) < 0) {
            Py_DECREF(record);
            return NULL;
        }
        PyList_SetItem(hits, i, record); /* steals record, drops the hit */
        built++;
    }
    return PyLong_FromSsize_t(built);
}

/* configure_records(UsageRecord, TokenCounts, Attribution, slots, max_tokens, max_cost, and the three
   classes' field names in order): slots are
   the extractor's (IN, OUT, CACHE_READ, CACHE_WRITE, REASONING, TOTAL, REQUEST_MODEL, COST,
   ESTIMATED, MARKER, ERROR_TYPE, TASK_SCOPE, CACHE_WRITE_1H, SERVICE_TIER, ENRICHMENT_FAILED,
   VERIFY_PASSED); the label slots are REQUEST_MODEL and the ten after it, in UsageRecord's order. */
static PyObject *configure_records(PyObject *self, PyObject *args) {
    PyObject *rec, *tok, *att, *slots;
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "_otlp_scan.configure() first");
        return NULL;
    }
    records_configured = 0;
    PyObject *rec_fields, *tok_fields, *att_fields;
    if (!PyArg_ParseTuple(args, "OOOO!LdO!O!O!", &rec, &tok, &att, &PyTuple_Type, &slots, &max_tokens, &max_cost,
                          &PyTuple_Type, &rec_fields, &PyTuple_Type, &tok_fields, &PyTuple_Type, &att_fields))
        return NULL;
    if (layout_of(rec, rec_fields, &record_layout) < 0 || layout_of(tok, tok_fields, &tokens_layout) < 0 ||
        layout_of(att, att_fields, &attribution_layout) < 0 || record_layout.n != 19 || tokens_layout.n != 6 ||
        attribution_layout.n != N_WHO) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "configure_records: not the expected slots");
        return NULL;
    }
    if (PyTuple_GET_SIZE(slots) != N_BUILD_SLOTS) {
        PyErr_SetString(PyExc_ValueError, "configure_records: wrong number of slots");
        return NULL;
    }
    for (int i = 0; i < N_BUILD_SLOTS; i++) {
        int slot = (int)PyLong_AsLong(PyTuple_GET_ITEM(slots, i));
        if (slot < 0 || slot >= n_slots || (i == S_REQUEST_MODEL && slot + 4 + N_WHO > n_slots)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "configure_records: slot out of range");
            return NULL;
        }
        build_slot[i] = slot;
    }
    Py_XSETREF(record_type, Py_NewRef(rec));
    Py_XSETREF(tokens_type, Py_NewRef(tok));
    Py_XSETREF(attribution_type, Py_NewRef(att));
    if (str_unknown == NULL) {
        str_unknown = PyUnicode_InternFromString("unknown");
        str_chat = PyUnicode_InternFromString("chat");
        str_ok = PyUnicode_InternFromString("ok");
        str_error = PyUnicode_InternFromString("error");
        str_lower = PyUnicode_InternFromString("lower");
        empty_tuple = PyTuple_New(0);
        zero = PyLong_FromLong(0);
        if (!str_unknown || !str_chat || !str_ok || !str_error || !str_lower || !empty_tuple || !zero) return NULL;
    }
    records_configured = 1;
    Py_RETURN_NONE;
}

/* --- tally(): records added to their series (aggregate.Aggregator._add_locked, in C) ---------------- */

/* The Series class (aggregate.py) as configure_series() gave it: a slotted dataclass whose fields
   tally() reads and replaces in place, as the Python loop's `+=` does. */
enum { SE_TOKENS, SE_BUCKETS, SE_COST, SE_OK, SE_ERROR, SE_ESTIMATED, SE_INPUT_SUM, SE_LAST_SEEN, N_SERIES_FIELDS };
enum { R_TOKENS = 4, R_ESTIMATED = 5, R_ATTRIBUTION = 7, R_STATUS = 8 }; /* UsageRecord's fields (R_COST: 6) */
enum { A_TASK_ID = 2 };                                                    /* Attribution's */
static Layout series_layout;
static int series_configured = 0;
#define N_TOKEN_TYPES 5
#define TALLY_MAX (1LL << 60) /* counts tally() adds in C: sums of a few stay far from overflow */
#define FIELD(obj, layout, i) (*(PyObject **)((char *)(obj) + (layout).offset[i]))

/* `old + add` as Python's int `+` gives it; a new reference. */
static PyObject *int_plus(PyObject *old, long long add) {
    if (PyLong_CheckExact(old)) {
        int overflow = 0;
        long long n = PyLong_AsLongLongAndOverflow(old, &overflow);
        if (!overflow && !(n == -1 && PyErr_Occurred()) && n < TALLY_MAX && n > -TALLY_MAX)
            return PyLong_FromLongLong(n + add);
        PyErr_Clear();
    }
    PyObject *addend = PyLong_FromLongLong(add);
    if (addend == NULL) return NULL;
    PyObject *sum = PyNumber_Add(old, addend);
    Py_DECREF(addend);
    return sum;
}

/* obj's field i += add (an int); -1 on error. */
static int add_int_field(PyObject *obj, const Layout *layout, int i, long long add) {
    PyObject **field = (PyObject **)((char *)obj + layout->offset[i]);
    PyObject *sum = int_plus(*field, add);
    if (sum == NULL) return -1;
    Py_SETREF(*field, sum);
    return 0;
}

/* list[i] += add; -1 on error. */
static int add_int_item(PyObject *list, Py_ssize_t i, long long add) {
    PyObject *sum = int_plus(PyList_GET_ITEM(list, i), add);
    if (sum == NULL) return -1;
    PyObject *old = PyList_GET_ITEM(list, i);
    PyList_SET_ITEM(list, i, sum);
    Py_DECREF(old);
    return 0;
}

/* obj's field i += value, as Python's `+=` on a float: float + float (or + int, converted by
   PyLong_AsDouble, as float.__add__ converts it) in double; anything else by PyNumber_InPlaceAdd. */
static int add_float_field(PyObject *obj, const Layout *layout, int i, PyObject *value) {
    PyObject **field = (PyObject **)((char *)obj + layout->offset[i]);
    PyObject *sum;
    if (PyFloat_CheckExact(*field) && (PyFloat_CheckExact(value) || PyLong_CheckExact(value))) {
        double add = PyFloat_CheckExact(value) ? PyFloat_AS_DOUBLE(value) : PyLong_AsDouble(value);
        if (add == -1.0 && PyErr_Occurred()) return -1;
        sum = PyFloat_FromDouble(PyFloat_AS_DOUBLE(*field) + add);
    } else {
        sum = PyNumber_InPlaceAdd(*field, value);
    }
    if (sum == NULL) return -1;
    Py_SETREF(*field, sum);
    return 0;
}

/* A count tally() adds in C: an exact int of magnitude below TALLY_MAX. */
static int tally_count(PyObject *v, long long *out) { return bounded_ll(v, TALLY_MAX - 1, out) && PyLong_CheckExact(v); }

/* One record added to its series, or 0 (nothing changed) when it is not one tally() mirrors
   exactly: the caller adds it in Python. Everything is checked before anything is changed. */
static int tally_one(PyObject *record, PyObject *series, PyObject *buckets, PyObject *now, PyObject *extras) {
    if (Py_TYPE(record) != record_layout.type || Py_TYPE(series) != series_layout.type) return 0;
    PyObject *tokens = FIELD(record, record_layout, R_TOKENS), *cost = FIELD(record, record_layout, R_COST),
             *attribution = FIELD(record, record_layout, R_ATTRIBUTION),
             *status = FIELD(record, record_layout, R_STATUS), *estimated = FIELD(record, record_layout, R_ESTIMATED);
    if (!tokens || !cost || !attribution || !status || !estimated) return 0; /* a deleted field: Python raises */
    if (Py_TYPE(tokens) != tokens_layout.type || Py_TYPE(attribution) != attribution_layout.type) return 0;
    for (int i = 0; i < N_SERIES_FIELDS; i++)
        if (FIELD(series, series_layout, i) == NULL) return 0;
    if (!(cost == Py_None || PyFloat_CheckExact(cost)) || !(estimated == Py_True || estimated == Py_False) ||
        !PyUnicode_CheckExact(status))
        return 0;
    long long c[N_TOKEN_TYPES];
    for (int i = 0; i < N_TOKEN_TYPES; i++)
        if (FIELD(tokens, tokens_layout, i) == NULL || !tally_count(FIELD(tokens, tokens_layout, i), &c[i])) return 0;
    PyObject *counts = FIELD(series, series_layout, SE_TOKENS), *hist = FIELD(series, series_layout, SE_BUCKETS);
    Py_ssize_t n_buckets = PyTuple_GET_SIZE(buckets);
    if (!PyList_CheckExact(counts) || PyList_GET_SIZE(counts) != N_TOKEN_TYPES || !PyList_CheckExact(hist) ||
        PyList_GET_SIZE(hist) != n_buckets + 1)
        return 0;
    PyObject *task_id = FIELD(attribution, attribution_layout, A_TASK_ID);
    if (task_id == NULL) return 0;
    int has_task = task_id == Py_None ? 0 : PyObject_IsTrue(task_id);
    if (has_task < 0) return -1;
    PyObject *input = FIELD(tokens, tokens_layout, 0);
    Py_ssize_t lo = 0, hi = n_buckets; /* bisect_left(buckets, input), as the bisect module compares */
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        int less = PyObject_RichCompareBool(PyTuple_GET_ITEM(buckets, mid), input, Py_LT);
        if (less < 0) return -1;
        if (less) lo = mid + 1;
        else hi = mid;
    }
    int is_error = PyUnicode_Compare(status, str_error) == 0;
    if (is_error == 0 && PyErr_Occurred()) return -1;
    /* the changes, as the Python loop makes them (TokenCounts.disjoint_counts() inline) */
    long long fresh = c[0] - c[2] - c[3], visible = c[1] - c[4];
    if (fresh < 0) fresh = 0;
    if (visible < 0) visible = 0;
    long long add[N_TOKEN_TYPES] = {fresh, visible, c[2], c[3], c[4]};
    long long total = fresh + visible + c[2] + c[3] + c[4];
    Py_INCREF(now);
    Py_SETREF(FIELD(series, series_layout, SE_LAST_SEEN), now);
    for (int i = 0; i < N_TOKEN_TYPES; i++)
        if (add[i] && add_int_item(counts, i, add[i]) < 0) return -1;
    if (cost != Py_None && add_float_field(series, &series_layout, SE_COST, cost) < 0) return -1;
    if (add_int_field(series, &series_layout, is_error ? SE_ERROR : SE_OK, 1) < 0) return -1;
    if (estimated == Py_True && add_int_field(series, &series_layout, SE_ESTIMATED, total) < 0) return -1;
    if (add_int_item(hist, lo, 1) < 0 || add_float_field(series, &series_layout, SE_INPUT_SUM, input) < 0) return -1;
    if (cost == Py_None || has_task) {
        PyObject *item = Py_BuildValue("(OL)", record, total);
        if (item == NULL || PyList_Append(extras, item) < 0) {
            Py_XDECREF(item);
            return -1;
        }
        Py_DECREF(item);
    }
    return 1;
}

/* tally(records, keys, entries, buckets, now, start, extras) -> the index of the first record from
   `start` on that it did not add (len(records): it added them all). Each record is added to the
   series entries[keys[i]], as aggregate.Aggregator's Python loop adds it; a record whose key has no
   series yet, or that is not of the shape mirrored here, stops it (the caller adds that one in
   Python and calls again after it). (record, its total tokens) of each added record that is unpriced
   or belongs to a task instance is appended to `extras`, which the caller then counts in order. */
static PyObject *tally(PyObject *self, PyObject *args) {
    PyObject *records, *keys, *entries, *buckets, *now, *extras;
    Py_ssize_t i;
    if (!records_configured || !series_configured) {
        PyErr_SetString(PyExc_RuntimeError, "_otlp_scan.configure_series() was not called");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!nO!", &PyList_Type, &records, &PyList_Type, &keys, &PyDict_Type, &entries,
                          &PyTuple_Type, &buckets, &PyFloat_Type, &now, &i, &PyList_Type, &extras))
        return NULL;
    if (PyList_GET_SIZE(keys) != PyList_GET_SIZE(records)) {
        PyErr_SetString(PyExc_ValueError, "tally: one key per record");
        return NULL;
    }
    for (; i >= 0 && i < PyList_GET_SIZE(records); i++) {
        PyObject *series = PyDict_GetItemWithError(entries, PyList_GET_ITEM(keys, i));
        if (series == NULL) {
            if (PyErr_Occurred()) return NULL;
            break;
        }
        int done = tally_one(PyList_GET_ITEM(records, i), series, buckets, now, extras);
        if (done < 0) return NULL;
        if (!done) break;
    }
    return PyLong_FromSsize_t(i);
}

/* configure_series(Series, its field names: tokens, input_buckets, cost_usd, requests_ok,
   requests_error, estimated_tokens, input_sum, last_seen), after configure_records. */
static PyObject *configure_series(PyObject *self, PyObject *args) {
    PyObject *cls, *names;
    series_configured = 0;
    if (!records_configured) {
        PyErr_SetString(PyExc_RuntimeError, "_otlp_scan.configure_records() first");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OO!", &cls, &PyTuple_Type, &names)) return NULL;
    if (layout_of(cls, names, &series_layout) < 0 || series_layout.n != N_SERIES_FIELDS) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "configure_series: not the expected slots");
        return NULL;
    }
    Py_INCREF(cls); /* kept: its slot offsets are used */
    series_configured = 1;
    Py_RETURN_NONE;
}

static void clear_table(void) {
    for (int i = 0; i < TABLE_SIZE; i++) {
        PyMem_Free(table[i].key);
        table[i].key = NULL;
    }
}

/* configure(schema, entries, n_slots, no_rank, (IN, OUT, TOTAL, TASK_SCOPE, VERIFY_PASSED)[, max_label])
   schema: per type (T_REQ.. first, in enum order), a list of (fieldno, kind, repeated, sub type)
   entries: (key, slot, rank, flags) for every attribute name the extractor reads */
static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *types, *entries, *usage_slots;
    uint16_t probe = 1;
    if (*(uint8_t *)&probe != 1) {
        PyErr_SetString(PyExc_RuntimeError, "_otlp_scan: little-endian hosts only");
        return NULL;
    }
    configured = 0;
    max_label = 128;
    if (!PyArg_ParseTuple(args, "O!O!iiO|i", &PyList_Type, &types, &PyList_Type, &entries, &n_slots,
                          &no_rank, &usage_slots, &max_label))
        return NULL;
    if (!PyArg_ParseTuple(usage_slots, "iiiii", &slot_in, &slot_out, &slot_total, &slot_task_scope,
                          &slot_verify))
        return NULL;
    n_types = (int)PyList_GET_SIZE(types);
    int usage[] = {slot_in, slot_out, slot_total, slot_task_scope, slot_verify};
    for (size_t i = 0; i < sizeof usage / sizeof usage[0]; i++)
        if (usage[i] < 0 || usage[i] >= n_slots) n_slots = 0; /* refused just below */
    if (n_types < T_FIXED || n_types > MAX_TYPES || n_slots > MAX_SLOTS || n_slots < 1 || no_rank < 0 || no_rank > 255 ||
        max_label < 1) {
        PyErr_SetString(PyExc_ValueError, "_otlp_scan.configure: schema or slots out of range");
        return NULL;
    }
    memset(schema, 0, sizeof schema);
    memset(high_fields, 0, sizeof high_fields);
    for (int t = 0; t < n_types; t++) {
        PyObject *fields = PyList_GET_ITEM(types, t);
        if (!PyList_Check(fields)) return PyErr_Format(PyExc_TypeError, "type %d: a list expected", t);
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(fields); i++) {
            int no, kind, repeated, sub;
            if (!PyArg_ParseTuple(PyList_GET_ITEM(fields, i), "iiii", &no, &kind, &repeated, &sub)) return NULL;
            if (sub >= n_types || kind < K_NONE || kind > K_MESSAGE || no < 1)
                return PyErr_Format(PyExc_ValueError, "type %d field %d: bad spec", t, no);
            if (no >= MAX_FIELDNO) {
                high_fields[t] = 1;
                continue;
            }
            schema[t][no].kind = (uint8_t)kind;
            schema[t][no].repeated = (uint8_t)repeated;
            schema[t][no].sub = (int16_t)sub;
        }
    }
    clear_table();
    if (PyList_GET_SIZE(entries) > TABLE_SIZE / 4) {
        PyErr_SetString(PyExc_ValueError, "_otlp_scan.configure: too many keys");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(entries); i++) {
        const char *key;
        Py_ssize_t len;
        int slot, rank, flags;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(entries, i), "s#iii", &key, &len, &slot, &rank, &flags))
            return NULL;
        if (slot < 0 || slot >= n_slots) return PyErr_Format(PyExc_ValueError, "%s: slot out of range", key);
        uint32_t h = hash_key((const uint8_t *)key, len) & (TABLE_SIZE - 1);
        while (table[h].key != NULL) h = (h + 1) & (TABLE_SIZE - 1);
        table[h].key = PyMem_Malloc(len + 1);
        if (table[h].key == NULL) return PyErr_NoMemory();
        memcpy(table[h].key, key, len + 1);
        table[h].len = len;
        table[h].slot = slot;
        table[h].rank = rank;
        table[h].flags = flags;
    }
    configured = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "Give the walk the schema and the attribute names read."},
    {"build", build, METH_VARARGS,
     "build(hits, resources, ours, ceiling, prices=None, unpriced=None) -> n: scan()'s plain usage hits "
     "replaced by their records, priced by prices' compiled price sets; records left without a cost are "
     "appended to unpriced."},
    {"linear", linear, METH_VARARGS,
     "linear(thresholds, terms) -> a price set compiled for build() (pricing._Rates' parts), or None."},
    {"price", price, METH_VARARGS, "price(linear, counts) -> the cost build() gives a record of these counts."},
    {"tally", tally, METH_VARARGS,
     "tally(records, keys, entries, buckets, now, start, extras) -> the index of the first record not added."},
    {"configure_series", configure_series, METH_VARARGS, "Give tally() the aggregator's Series class."},
    {"configure_records", configure_records, METH_VARARGS,
     "Give build() the record classes, the slots it reads and the bounds it checks."},
    {"links", links, METH_VARARGS,
     "links(data, traces, keys[, operations]) -> ({span key: parent key}, [(span key, operation, agent, workflow)]) of "
     "the spans of traces, or None to decline."},
    {"scan", scan, METH_VARARGS,
     "scan(data, fallback=None) -> (n_spans, resources, scopes, hits, n_events), or None to decline (take the "
     "Python path). fallback: a resource attribute read besides the attribution ones."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_otlp_scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__otlp_scan(void) { return PyModule_Create(&module); }
