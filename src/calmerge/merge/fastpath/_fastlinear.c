/* calmerge.merge.fastpath._fastlinear: the weighted-average merge (linear, soup) in one fused pass.
 *
 * Same contract and the same bits as the numpy kernel in numpy_kernel.py (and so as torch's
 * `methods._linear` and mergekit 0.1.5): each input is widened to fp32 (rounded through the
 * compute dtype first when that differs), accumulated from +0 by fused multiply-adds (fmaf: one
 * rounding per element and step, torch's CPU addcmul_), divided by the fp32 sum of the weights
 * when normalising, rounded through the compute dtype, and narrowed to the output dtype with
 * round-to-nearest-even. The numpy kernel needs ~20 passes over memory per block for this;
 * here it is one pass over a few KB of L1-resident accumulator, with the GIL released, so the
 * merge runs at the speed of the page cache.
 *
 * Optional: setup.py builds it when a C compiler is present; otherwise kernels.py falls back
 * to numpy (same results, slower).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD != 0
#error "fp32 arithmetic with excess precision would not match torch bit for bit"
#endif

enum { T_F32 = 0, T_BF16 = 1, T_F16 = 2 };
static const int TAG_SIZE[] = {4, 2, 2};

#define CHUNK 2048 /* elements per accumulator tile (8 KB, stays in L1) */

static inline float bits_to_f32(uint32_t b) {
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static inline uint32_t f32_to_bits(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

/* The conversions are branch-free (selects only) so that every loop below vectorises. They are
 * exact for every finite value and ±inf; NaN never reaches a narrowing (the kernel stops first). */

static inline float bf16_to_f32(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }

/* Round to nearest even on the bit pattern: torch's rule for finite values. */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t b = f32_to_bits(f);
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = h & 0x7fffu;
    uint32_t special = 0x7f800000u | ((em & 0x3ffu) << 13);          /* inf */
    uint32_t normal = (em << 13) + 0x38000000u;                        /* rebias by +112 */
    uint32_t tiny = f32_to_bits((float)(int32_t)em * 5.9604644775390625e-08f); /* em · 2^-24 */
    uint32_t r = em >= 0x7c00u ? special : (em >= 0x0400u ? normal : tiny);
    return bits_to_f32(sign | r);
}

/* IEEE fp32 → fp16, round to nearest even, overflow to ±inf (numpy's and torch's cast). */
static inline uint16_t f32_to_f16(float f) {
    uint32_t b = f32_to_bits(f);
    uint32_t sign = (b >> 16) & 0x8000u;
    uint32_t a = b & 0x7fffffffu;
    /* below 2^-14 (half subnormal or zero): adding 0.5 puts the half-subnormal grid (2^-24)
     * on fp32's ulp there, so one RNE fp32 addition rounds it */
    uint32_t tiny = f32_to_bits(bits_to_f32(a) + 0.5f) - 0x3f000000u;
    uint32_t normal = (a + 0xc8000fffu + ((a >> 13) & 1u)) >> 13; /* rebias −112, RNE */
    uint32_t r = a < 0x38800000u ? tiny : normal;
    r = a >= 0x477ff000u ? 0x7c00u : r; /* ≥ 65520 rounds to inf */
    return (uint16_t)(sign | r);
}

static inline float round_through(int tag, float x) {
    if (tag == T_BF16) return bf16_to_f32(f32_to_bf16(x));
    if (tag == T_F16) return f16_to_f32(f32_to_f16(x));
    return x;
}

static inline float load(int tag, const void *p, Py_ssize_t j) {
    if (tag == T_BF16) return bf16_to_f32(((const uint16_t *)p)[j]);
    if (tag == T_F16) return f16_to_f32(((const uint16_t *)p)[j]);
    return ((const float *)p)[j];
}

typedef struct {
    int n_in;
    const void *in[8];
    int tag[8];
    float weight[8];
    float divisor; /* Σ w_i in fp32 when normalising, else 1 */
    float scale;   /* 1/divisor when that is exact (a power of two), else 1 */
    int compute;
    void *out;
    int out_tag;
    Py_ssize_t n;
} Job;

#define INLINE static inline __attribute__((always_inline))
#if !(defined(__GNUC__) || defined(__clang__))
#undef INLINE
#define INLINE static inline
#endif

/* acc += x·w with one rounding (fmaf), one loop per input dtype; the first input starts from
 * +0, and an input of another dtype than the compute one is rounded through the latter first. */
INLINE void accumulate(float *restrict acc, const Job *job, int i, Py_ssize_t s, Py_ssize_t m) {
    const int first = i == 0; /* fma(x, w, +0): the tile needs no zeroing pass */
    const float w = job->weight[i];
    const int tag = job->tag[i];
    if (job->compute != T_F32 && job->compute != tag) {
        for (Py_ssize_t j = 0; j < m; j++)
            acc[j] = fmaf(round_through(job->compute, load(tag, job->in[i], s + j)), w,
                          first ? 0.0f : acc[j]);
    } else if (tag == T_BF16) {
        const uint16_t *restrict p = (const uint16_t *)job->in[i] + s;
        for (Py_ssize_t j = 0; j < m; j++) acc[j] = fmaf(bf16_to_f32(p[j]), w, first ? 0.0f : acc[j]);
    } else if (tag == T_F16) {
        const uint16_t *restrict p = (const uint16_t *)job->in[i] + s;
        for (Py_ssize_t j = 0; j < m; j++) acc[j] = fmaf(f16_to_f32(p[j]), w, first ? 0.0f : acc[j]);
    } else {
        const float *restrict p = (const float *)job->in[i] + s;
        for (Py_ssize_t j = 0; j < m; j++) acc[j] = fmaf(p[j], w, first ? 0.0f : acc[j]);
    }
}

/* Largest |bit pattern|: > 0x7f800000 means a NaN, == means an infinity. */
INLINE uint32_t top_bits(const float *restrict acc, Py_ssize_t m) {
    uint32_t top = 0;
    for (Py_ssize_t j = 0; j < m; j++) {
        uint32_t a = f32_to_bits(acc[j]) & 0x7fffffffu;
        top = a > top ? a : top;
    }
    return top;
}

INLINE void store(float *restrict acc, const Job *job, Py_ssize_t s, Py_ssize_t m) {
    if (job->compute == T_BF16)
        for (Py_ssize_t j = 0; j < m; j++) acc[j] = bf16_to_f32(f32_to_bf16(acc[j]));
    else if (job->compute == T_F16)
        for (Py_ssize_t j = 0; j < m; j++) acc[j] = f16_to_f32(f32_to_f16(acc[j]));
    if (job->out_tag == T_BF16) {
        uint16_t *restrict o = (uint16_t *)job->out + s;
        for (Py_ssize_t j = 0; j < m; j++) o[j] = f32_to_bf16(acc[j]);
    } else if (job->out_tag == T_F16) {
        uint16_t *restrict o = (uint16_t *)job->out + s;
        for (Py_ssize_t j = 0; j < m; j++) o[j] = f32_to_f16(acc[j]);
    } else {
        memcpy((float *)job->out + s, acc, (size_t)m * 4);
    }
}

/* Tile by tile: accumulate every input, normalise, check, round, narrow. Returns 0 ok,
 * 1 non-finite (overflow), 2 NaN (the rest is not written: the caller recomputes). */
INLINE int linear_tiles(const Job *job) {
    float acc[CHUNK];
    uint32_t worst = 0;
    for (Py_ssize_t s = 0; s < job->n; s += CHUNK) {
        Py_ssize_t m = job->n - s < CHUNK ? job->n - s : CHUNK;
        for (int i = 0; i < job->n_in; i++) accumulate(acc, job, i, s, m);
        if (job->scale != 1.0f) /* a power-of-two divisor: x·(1/d) is x/d exactly */
            for (Py_ssize_t j = 0; j < m; j++) acc[j] = acc[j] * job->scale;
        else if (job->divisor != 1.0f)
            for (Py_ssize_t j = 0; j < m; j++) acc[j] = acc[j] / job->divisor;
        uint32_t top = top_bits(acc, m);
        if (top > 0x7f800000u) return 2;
        worst = top > worst ? top : worst;
        store(acc, job, s, m);
    }
    return worst == 0x7f800000u ? 1 : 0;
}

static int linear_generic(const Job *job) { return linear_tiles(job); }

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define HAVE_DISPATCH 1
__attribute__((target("avx2,fma"))) static int linear_avx2_fma(const Job *job) {
    return linear_tiles(job);
}
#endif

static int have_avx2_fma = 0; /* set once at import (PyInit), read by every thread */

static int run(const Job *job) {
#ifdef HAVE_DISPATCH
    if (have_avx2_fma) return linear_avx2_fma(job);
#endif
    return linear_generic(job);
}

static int parse_tag(PyObject *obj) {
    const char *s = PyUnicode_Check(obj) ? PyUnicode_AsUTF8(obj) : NULL;
    if (s == NULL) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "dtype tags must be strings");
        return -1;
    }
    if (strcmp(s, "F32") == 0) return T_F32;
    if (strcmp(s, "BF16") == 0) return T_BF16;
    if (strcmp(s, "F16") == 0) return T_F16;
    PyErr_Format(PyExc_ValueError, "unsupported dtype tag '%s' (F32, BF16 or F16)", s);
    return -1;
}

PyDoc_STRVAR(linear_doc,
             "linear(inputs, tags, weights, normalize, compute_tag, out, out_tag) -> int\n\n"
             "Merge raw little-endian tensors: Σ w_i·x_i (÷ Σ w_i) by fused multiply-adds in "
             "fp32.\nReturns 0 (ok), 1 (overflow to ±inf) or 2 (NaN; `out` is then incomplete).");

static PyObject *py_linear(PyObject *self, PyObject *args) {
    PyObject *inputs, *tags, *weights, *compute_obj, *out_obj, *out_tag_obj;
    int normalize;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOpOOO", &inputs, &tags, &weights, &normalize, &compute_obj,
                          &out_obj, &out_tag_obj))
        return NULL;
    Job job;
    memset(&job, 0, sizeof job);
    Py_buffer views[8];
    Py_buffer outview;
    int held = 0, status = -1, have_out = 0;
    PyObject *in_seq = PySequence_Fast(inputs, "inputs must be a sequence");
    PyObject *tag_seq = in_seq ? PySequence_Fast(tags, "tags must be a sequence") : NULL;
    PyObject *w_seq = tag_seq ? PySequence_Fast(weights, "weights must be a sequence") : NULL;
    if (w_seq == NULL) goto done;
    job.n_in = (int)PySequence_Fast_GET_SIZE(in_seq);
    if (job.n_in < 1 || job.n_in > 8 || PySequence_Fast_GET_SIZE(tag_seq) != job.n_in ||
        PySequence_Fast_GET_SIZE(w_seq) != job.n_in) {
        PyErr_SetString(PyExc_ValueError, "1 to 8 inputs, with one tag and one weight each");
        goto done;
    }
    if ((job.compute = parse_tag(compute_obj)) < 0) goto done;
    if ((job.out_tag = parse_tag(out_tag_obj)) < 0) goto done;
    float total = 0.0f;
    for (int i = 0; i < job.n_in; i++) {
        if ((job.tag[i] = parse_tag(PySequence_Fast_GET_ITEM(tag_seq, i))) < 0) goto done;
        double w = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(w_seq, i));
        if (w == -1.0 && PyErr_Occurred()) goto done;
        job.weight[i] = (float)w; /* round to nearest even, as np.float32(w) */
        total = total + job.weight[i];
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(in_seq, i), &views[i], PyBUF_SIMPLE) < 0)
            goto done;
        held++;
        job.in[i] = views[i].buf;
        Py_ssize_t count = views[i].len / TAG_SIZE[job.tag[i]];
        if (i == 0) job.n = count;
        if (count != job.n || views[i].len % TAG_SIZE[job.tag[i]] != 0) {
            PyErr_SetString(PyExc_ValueError, "inputs hold different numbers of elements");
            goto done;
        }
    }
    job.divisor = normalize ? total : 1.0f;
    job.scale = 1.0f;
    int exponent;
    if (isfinite(job.divisor) && job.divisor != 0.0f && frexpf(job.divisor, &exponent) == 0.5f &&
        exponent > -125 && exponent < 127)
        job.scale = ldexpf(1.0f, 1 - exponent);
    if (PyObject_GetBuffer(out_obj, &outview, PyBUF_WRITABLE) < 0) goto done;
    have_out = 1;
    if (outview.len < job.n * TAG_SIZE[job.out_tag]) {
        PyErr_SetString(PyExc_ValueError, "output buffer is too small");
        goto done;
    }
    job.out = outview.buf;
    Py_BEGIN_ALLOW_THREADS status = run(&job);
    Py_END_ALLOW_THREADS
done:
    for (int i = 0; i < held; i++) PyBuffer_Release(&views[i]);
    if (have_out) PyBuffer_Release(&outview);
    Py_XDECREF(in_seq);
    Py_XDECREF(tag_seq);
    Py_XDECREF(w_seq);
    return status < 0 ? NULL : PyLong_FromLong(status);
}

/* Copy with a dtype change (rows past the shared vocabulary); returns 0 if any value is
 * NaN or ±inf (the caller then names the tensor), else 1. −0 stays −0. */
INLINE int convert_block(const void *src, int tag, Py_ssize_t n, void *out, int out_tag) {
    float tile[CHUNK];
    uint32_t top = 0;
    for (Py_ssize_t s = 0; s < n; s += CHUNK) {
        Py_ssize_t m = n - s < CHUNK ? n - s : CHUNK;
        if (tag == T_BF16) {
            const uint16_t *restrict p = (const uint16_t *)src + s;
            for (Py_ssize_t j = 0; j < m; j++) tile[j] = bf16_to_f32(p[j]);
        } else if (tag == T_F16) {
            const uint16_t *restrict p = (const uint16_t *)src + s;
            for (Py_ssize_t j = 0; j < m; j++) tile[j] = f16_to_f32(p[j]);
        } else {
            memcpy(tile, (const float *)src + s, (size_t)m * 4);
        }
        uint32_t t = top_bits(tile, m);
        top = t > top ? t : top;
        if (top >= 0x7f800000u) return 0;
        if (out != NULL) {
            Job job = {.compute = T_F32, .out = out, .out_tag = out_tag};
            store(tile, &job, s, m);
        }
    }
    return 1;
}

static int parse_buffer(PyObject *obj, Py_buffer *view, int tag, int writable) {
    if (PyObject_GetBuffer(obj, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0) return -1;
    if (view->len % TAG_SIZE[tag] != 0) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "buffer length is not a whole number of elements");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(convert_doc, "convert(src, tag, out, out_tag) -> bool\n\n"
                          "Raw tensor bytes to another dtype (round to nearest even); False "
                          "when the input holds NaN or inf.");

static PyObject *py_convert(PyObject *self, PyObject *args) {
    PyObject *src_obj, *tag_obj, *out_obj, *out_tag_obj;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOO", &src_obj, &tag_obj, &out_obj, &out_tag_obj)) return NULL;
    int tag = parse_tag(tag_obj), out_tag = tag < 0 ? -1 : parse_tag(out_tag_obj);
    if (out_tag < 0) return NULL;
    Py_buffer src, out;
    if (parse_buffer(src_obj, &src, tag, 0) < 0) return NULL;
    if (parse_buffer(out_obj, &out, out_tag, 1) < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    Py_ssize_t n = src.len / TAG_SIZE[tag];
    int ok = -1;
    if (out.len < n * TAG_SIZE[out_tag]) {
        PyErr_SetString(PyExc_ValueError, "output buffer is too small");
    } else {
        Py_BEGIN_ALLOW_THREADS ok = convert_block(src.buf, tag, n, out.buf, out_tag);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    return ok < 0 ? NULL : PyBool_FromLong(ok);
}

PyDoc_STRVAR(finite_doc, "finite(src, tag) -> bool\n\nWhether raw tensor bytes hold no NaN/inf.");

static PyObject *py_finite(PyObject *self, PyObject *args) {
    PyObject *src_obj, *tag_obj;
    (void)self;
    if (!PyArg_ParseTuple(args, "OO", &src_obj, &tag_obj)) return NULL;
    int tag = parse_tag(tag_obj);
    if (tag < 0) return NULL;
    Py_buffer src;
    if (parse_buffer(src_obj, &src, tag, 0) < 0) return NULL;
    int ok;
    Py_BEGIN_ALLOW_THREADS ok = convert_block(src.buf, tag, src.len / TAG_SIZE[tag], NULL, 0);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    return PyBool_FromLong(ok);
}

static PyMethodDef methods[] = {
    {"linear", py_linear, METH_VARARGS, linear_doc},
    {"convert", py_convert, METH_VARARGS, convert_doc},
    {"finite", py_finite, METH_VARARGS, finite_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastlinear",
    "Fused fp32 weighted-average merge kernel (see kernels.py).", -1, methods, NULL, NULL, NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__fastlinear(void) {
#ifdef HAVE_DISPATCH
    __builtin_cpu_init();
    have_avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "AVX2_FMA", have_avx2_fma) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
