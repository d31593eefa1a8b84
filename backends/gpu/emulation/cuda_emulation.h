// CPU emulation of the CUDA C that backends/gpu/kernels/*.cu use, so that the same sources
// compile as C++17 with g++ -DCONVFORGE_EMULATION and run in CI, which has no GPU. Included by
// kernels/common.cuh; backends/gpu/emulator.py builds each kernel file into a shared library,
// calls its exported kernels and raises cf_last_error() as a RuntimeError.
//
// Execution. cf_run_grid(launch, body) runs the blocks one after another (x fastest, then y,
// then z) on the calling OS thread. A block's threads are fibers on that thread, each with its
// own 64 KiB stack (pooled, a guard page below each). Rounds alternate:
//   1. every runnable thread, in linear order (x fastest), runs until it returns or reaches a
//      barrier, where it switches to the next runnable thread (the last one to the scheduler);
//   2. the scheduler releases each complete warp group (every live lane named in the mask waits
//      at a warp operation with that mask: the values are exchanged through the lanes' slots)
//      or, if there is none, the block, when every live thread waits at the same
//      __syncthreads() (same file and line: CUDA leaves divergent barriers undefined).
// A thread that returned is not live: later barriers do not wait for it. When nothing can be
// released, the block is deadlocked (threads wait at different barriers, or at a barrier some
// live threads never reach): the launch stops, and cf_last_error() says who waits where.
// A stop costs about 20 ns with the hand-written x86-64 switch (a 256-thread block with three
// __syncthreads() and five shuffles, 22 us) and 20x that with ucontext, used elsewhere or with
// -DCF_EMULATION_UCONTEXT (it saves the signal mask with a system call).
//
// Launches of one kernel library run one at a time (a mutex), so the emulator's state and the
// kernels' __shared__ variables are plain statics: one copy per kernel, which is the block's
// because blocks run in turn (it starts zeroed and keeps the previous block's values).
// Libraries are independent, and cf_last_error() is per OS thread.
// Dynamic shared memory must be declared with CF_DYNAMIC_SHARED (common.cuh), not
// `extern __shared__`: it views a per-launch buffer, filled with 0xFF bytes (NaN, -1) before
// each block. A shuffle from a lane outside the group returns the same poison. A thread that
// overflows its 64 KiB stack (large local arrays) hits the guard page: a segmentation fault.
//
// Not emulated: threads switch only at barriers, so atomics are plain read-modify-writes and no
// data race (within or between blocks) shows; nor do the memory model, timing, occupancy,
// resource limits of static shared memory or registers, or tensor cores. Floating point is
// IEEE without fused multiply-adds unless written (nvcc contracts a*b+c), and the fast
// intrinsics (__expf, __fdividef) are exact here.
#pragma once

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <mutex>
#include <type_traits>

#if !defined(__x86_64__) || defined(CF_EMULATION_UCONTEXT)
#include <ucontext.h>
#define CF_EMULATION_USES_UCONTEXT 1
#endif

// **** CUDA keywords and types ****

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __constant__
#define __shared__ static
// __restrict__ is already a g++ keyword.

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
        : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return {x, y, z}; }
};

struct __align__(8) float2 { float x, y; };
struct __align__(16) float4 { float x, y, z, w; };
struct __align__(16) double2 { double x, y; };
struct __align__(8) int2 { int x, y; };
struct __align__(16) int4 { int x, y, z, w; };

// The shape of one launch, passed first to every exported kernel (emulator.py's _Launch).
struct cf_launch {
    dim3 grid;
    dim3 block;
    unsigned long long shared_bytes;
};

constexpr int warpSize = 32;

// Nothing of the emulator is exported but cf_last_error(): each kernel library keeps its own
// state even when several are loaded (build with -fno-gnu-unique too, or g++ makes the kernels'
// __shared__ statics process-wide). The types above stay visible: the exported kernels take
// cf_launch, and a function taking a hidden type is hidden too.
#pragma GCC visibility push(hidden)

// **** Context switch ****

#ifndef CF_EMULATION_USES_UCONTEXT
// cf_emu_switch(save_sp, load_sp): pushes the callee-saved registers, stores the stack pointer
// in *save_sp, then pops the same from the stack at load_sp and returns there. The floating-point
// control registers are shared (kernels cannot change them). A file-local symbol: each kernel
// library has its own.
asm(R"(
    .pushsection .text
    .p2align 4
    .type cf_emu_switch, @function
cf_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cf_emu_switch, .-cf_emu_switch
    .popsection
)");
extern "C" __attribute__((visibility("hidden"))) void cf_emu_switch(void** save_sp, void* load_sp);
#endif

namespace cf_emu {

#ifdef CF_EMULATION_USES_UCONTEXT
struct Context {
    ucontext_t uc;
};

inline void context_init(Context& context, unsigned char* stack, size_t bytes, void (*entry)()) {
    getcontext(&context.uc);
    context.uc.uc_stack.ss_sp = stack;
    context.uc.uc_stack.ss_size = bytes;
    context.uc.uc_link = nullptr;
    makecontext(&context.uc, entry, 0);
}

inline void context_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#else
struct Context {
    void* sp;
};

// A fresh stack holds what cf_emu_switch pops: six zeroed registers, then entry as the return
// address, aligned as if entry had been called.
inline void context_init(Context& context, unsigned char* stack, size_t bytes, void (*entry)()) {
    uintptr_t top = reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;  // entry's return address: it never returns
    *--sp = reinterpret_cast<void*>(entry);
    for (int i = 0; i < 6; ++i) *--sp = nullptr;
    context.sp = sp;
}

inline void context_switch(Context& from, Context& to) { cf_emu_switch(&from.sp, to.sp); }
#endif

// **** Fibers and the emulator's state ****

constexpr size_t kStackBytes = 64 * 1024;
constexpr unsigned kMaxBlockThreads = 1024;
constexpr unsigned long long kMaxSharedBytes = 227 * 1024;  // sm_90's opt-in dynamic maximum

enum class Wait : unsigned char { runnable, block, warp, done };

struct Fiber {
    Context context;
    uint3 thread_idx;
    unsigned linear, lane;
    Wait wait;
    // The barrier waited at (for messages and for matching __syncthreads() sites).
    const char* op;
    const char* file;
    int line;
    // A warp operation: what the lane publishes (source < 0: its own value) ...
    unsigned mask;
    int source;
    unsigned long long value;
    // ... and what it receives.
    unsigned long long result;
    bool result_ok;
    unsigned ballot, group;
};

// One per library, guarded by `lock` during a launch.
struct State {
    Fiber* current;
    Fiber* fibers;
    unsigned threads;
    Context scheduler;
    uint3 block_idx, block_dim, grid_dim;
    unsigned char* dynamic_shared;
    unsigned long long shared_bytes;
    void (*invoke)(const void*);
    const void* body;
    bool failed;
    char error[4096];
};

inline State state;
inline std::mutex lock;

// What the last launch of each OS thread left for cf_last_error().
struct Report {
    bool failed;
    char error[sizeof State::error];
};
inline thread_local Report report;

// Stacks, fibers and the dynamic shared buffer, grown on demand, freed at exit.
struct Pool {
    unsigned char* stacks = nullptr;
    unsigned capacity = 0;
    Fiber* fibers = nullptr;
    unsigned char* shared = nullptr;
    unsigned long long shared_capacity = 0;

    static size_t slot_bytes() { return kStackBytes + size_t(sysconf(_SC_PAGESIZE)); }
    unsigned char* stack(unsigned i) const {
        return stacks + i * slot_bytes() + (slot_bytes() - kStackBytes);
    }
    ~Pool() {
        if (stacks) munmap(stacks, capacity * slot_bytes());
        delete[] fibers;
        free(shared);
    }
};

inline Pool& pool() {
    static Pool p;
    return p;
}

__attribute__((format(printf, 1, 2))) inline void fail(const char* format, ...) {
    if (state.failed) return;  // keep the first error
    state.failed = true;
    va_list args;
    va_start(args, format);
    vsnprintf(state.error, sizeof state.error, format, args);
    va_end(args);
}

inline const char* base_name(const char* path) {
    const char* slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

// Grow the pool to `threads` stacks and `shared_bytes` of dynamic shared memory.
inline bool reserve(Pool& p, unsigned threads, unsigned long long shared_bytes) {
    if (threads > p.capacity) {
        if (p.stacks) munmap(p.stacks, p.capacity * Pool::slot_bytes());
        delete[] p.fibers;
        p.stacks = nullptr;
        p.fibers = nullptr;
        p.capacity = 0;
        size_t bytes = threads * Pool::slot_bytes();
        void* region = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                            -1, 0);
        if (region == MAP_FAILED) {
            fail("emulator: cannot map %u fiber stacks of %zu bytes", threads, kStackBytes);
            return false;
        }
        p.stacks = static_cast<unsigned char*>(region);
        p.capacity = threads;
        p.fibers = new Fiber[threads];
        for (unsigned i = 0; i < threads; ++i)  // guard pages: an overflow faults, not corrupts
            mprotect(p.stacks + i * Pool::slot_bytes(), Pool::slot_bytes() - kStackBytes,
                     PROT_NONE);
    }
    if (shared_bytes > p.shared_capacity) {
        free(p.shared);
        p.shared = static_cast<unsigned char*>(aligned_alloc(64, (shared_bytes + 63) / 64 * 64));
        p.shared_capacity = p.shared ? shared_bytes : 0;
        if (!p.shared) {
            fail("emulator: cannot allocate %llu bytes of dynamic shared memory", shared_bytes);
            return false;
        }
    }
    return true;
}

// Switch from a thread that has stopped (returned or waits) to the next runnable one after it
// in this round, or else back to the scheduler: one switch per stop, not two.
inline void pass_on(Fiber* self) {
    Fiber* end = state.fibers + state.threads;
    Fiber* next = self + 1;
    while (next != end && next->wait != Wait::runnable) ++next;
    if (next == end) return context_switch(self->context, state.scheduler);
    state.current = next;
    context_switch(self->context, next->context);
}

// Each fiber runs the kernel body once per block, then reports that it returned.
inline void fiber_main() {
    for (;;) {
        state.invoke(state.body);
        Fiber* self = state.current;
        self->wait = Wait::done;
        pass_on(self);
    }
}

// **** Barriers, as the kernel's threads see them ****

inline void sync_block(const char* file, int line) {
    Fiber* self = state.current;
    self->wait = Wait::block;
    self->op = "__syncthreads()";
    self->file = file;
    self->line = line;
    pass_on(self);
}

// Publish `value` and the lane to read (-1: keep one's own), wait for the warp group, and
// return the fiber holding what was received.
inline const Fiber& warp_op(const char* op, const char* file, int line, unsigned mask,
                            unsigned long long value, int source) {
    Fiber* self = state.current;
    if (!(mask >> self->lane & 1u)) {
        fail("%s at %s:%d: mask 0x%08x does not name the calling lane %u (thread %u)", op,
             base_name(file), line, mask, self->lane, self->linear);
        mask |= 1u << self->lane;
    }
    self->wait = Wait::warp;
    self->op = op;
    self->file = file;
    self->line = line;
    self->mask = mask;
    self->value = value;
    self->source = source;
    pass_on(self);
    return *self;
}

template <class T>
inline unsigned long long to_bits(T value) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
                  "warp shuffles move scalars of at most 8 bytes");
    unsigned long long bits = 0;
    memcpy(&bits, &value, sizeof(T));
    return bits;
}

template <class T>
inline T from_bits(unsigned long long bits) {
    T value;
    memcpy(&value, &bits, sizeof(T));
    return value;
}

template <class T>
inline T shuffle(const char* op, const char* file, int line, unsigned mask, T var, int source) {
    const Fiber& self = warp_op(op, file, line, mask, to_bits(var), source);
    return from_bits<T>(self.result_ok ? self.result : ~0ull);
}

// The first lane of the calling lane's segment of `width` lanes.
inline unsigned segment_start(const char* op, const char* file, int line, int& width) {
    if (width < 1 || width > 32 || (width & (width - 1))) {
        fail("%s at %s:%d: width must be a power of 2 from 1 to 32, but got %d", op,
             base_name(file), line, width);
        width = 32;
    }
    return state.current->lane & ~unsigned(width - 1);
}

template <class T>
inline T shfl_idx(const char* file, int line, unsigned mask, T var, int src_lane, int width = 32) {
    unsigned start = segment_start("__shfl_sync", file, line, width);
    int source = int(start + (unsigned(src_lane) & unsigned(width - 1)));
    return shuffle("__shfl_sync", file, line, mask, var, source);
}

template <class T>
inline T shfl_up(const char* file, int line, unsigned mask, T var, unsigned delta,
                 int width = 32) {
    unsigned start = segment_start("__shfl_up_sync", file, line, width);
    unsigned lane = state.current->lane;
    int source = delta <= lane - start ? int(lane - delta) : -1;
    return shuffle("__shfl_up_sync", file, line, mask, var, source);
}

template <class T>
inline T shfl_down(const char* file, int line, unsigned mask, T var, unsigned delta,
                   int width = 32) {
    unsigned start = segment_start("__shfl_down_sync", file, line, width);
    unsigned lane = state.current->lane;
    int source = delta < start + unsigned(width) - lane ? int(lane + delta) : -1;
    return shuffle("__shfl_down_sync", file, line, mask, var, source);
}

// Lanes may read earlier segments but get their own value from later ones (CUDA's rule).
template <class T>
inline T shfl_xor(const char* file, int line, unsigned mask, T var, int lane_mask,
                  int width = 32) {
    unsigned start = segment_start("__shfl_xor_sync", file, line, width);
    unsigned source = state.current->lane ^ unsigned(lane_mask);
    return shuffle("__shfl_xor_sync", file, line, mask, var,
                   source < start + unsigned(width) ? int(source) : -1);
}

inline unsigned ballot(const char* file, int line, unsigned mask, int predicate) {
    return warp_op("__ballot_sync", file, line, mask, predicate != 0, -1).ballot;
}

inline int any(const char* file, int line, unsigned mask, int predicate) {
    return warp_op("__any_sync", file, line, mask, predicate != 0, -1).ballot != 0;
}

inline int all(const char* file, int line, unsigned mask, int predicate) {
    const Fiber& self = warp_op("__all_sync", file, line, mask, predicate != 0, -1);
    return self.ballot == self.group;
}

inline void sync_warp(const char* file, int line, unsigned mask = 0xffffffffu) {
    warp_op("__syncwarp()", file, line, mask, 0, -1);
}

inline uint3 thread_idx() { return state.current->thread_idx; }
inline uint3 block_idx() { return state.block_idx; }
inline dim3 block_dim() { return state.block_dim; }
inline dim3 grid_dim() { return state.grid_dim; }
inline unsigned char* dynamic_shared() { return state.dynamic_shared; }

// **** The block scheduler ****

// Release every warp group whose live lanes all wait with the same mask; true if any did.
inline bool release_warps(State& s) {
    bool progress = false;
    for (unsigned first = 0; first < s.threads; first += 32) {
        Fiber* warp = s.fibers + first;
        unsigned lanes = s.threads - first < 32 ? s.threads - first : 32;
        unsigned live = 0, waiting = 0;
        for (unsigned l = 0; l < lanes; ++l) {
            live |= unsigned(warp[l].wait != Wait::done) << l;
            waiting |= unsigned(warp[l].wait == Wait::warp) << l;
        }
        for (unsigned pending = waiting; pending;) {
            unsigned mask = warp[__builtin_ctz(pending)].mask;
            unsigned group = mask & live;
            bool ready = (group & ~waiting) == 0;
            for (unsigned l = 0; l < lanes; ++l) {
                if (group >> l & 1u) ready = ready && warp[l].mask == mask;
                if (waiting >> l & 1u && warp[l].mask == mask) pending &= ~(1u << l);
            }
            if (!ready) continue;
            unsigned votes = 0;
            for (unsigned l = 0; l < lanes; ++l)
                if (group >> l & 1u && warp[l].value) votes |= 1u << l;
            for (unsigned l = 0; l < lanes; ++l) {
                if (!(group >> l & 1u)) continue;
                Fiber& f = warp[l];
                int source = f.source < 0 ? int(l) : f.source;
                f.result_ok = group >> source & 1u;
                f.result = f.result_ok ? warp[source].value : 0;
                f.ballot = votes;
                f.group = group;
                f.wait = Wait::runnable;
            }
            progress = true;
        }
    }
    return progress;
}

// Release the block if every live thread waits at the same __syncthreads().
inline bool release_block(State& s) {
    const Fiber* first = nullptr;
    for (unsigned i = 0; i < s.threads; ++i) {
        const Fiber& f = s.fibers[i];
        if (f.wait == Wait::done) continue;
        if (f.wait != Wait::block) return false;
        if (!first) first = &f;
        if (f.line != first->line || (f.file != first->file && strcmp(f.file, first->file)))
            return false;
    }
    if (!first) return false;
    for (unsigned i = 0; i < s.threads; ++i)
        if (s.fibers[i].wait == Wait::block) s.fibers[i].wait = Wait::runnable;
    return true;
}

inline bool same_wait(const Fiber& a, const Fiber& b) {
    return a.wait == b.wait && a.line == b.line && a.op == b.op && !strcmp(a.file, b.file) &&
           (a.wait != Wait::warp || a.mask == b.mask);
}

// "threads 0-63, 96-127 wait at __syncthreads() (kernel.cu:14); ..." for every distinct wait.
inline void report_deadlock(const State& s) {
    char text[sizeof s.error];
    size_t used = 0;
    auto add = [&](const char* format, auto... args) {
        if (used < sizeof text) used += snprintf(text + used, sizeof text - used, format, args...);
    };
    unsigned returned = 0;
    for (unsigned i = 0; i < s.threads; ++i) {
        const Fiber& f = s.fibers[i];
        bool seen = false;
        for (unsigned j = 0; j < i && !seen; ++j) seen = same_wait(s.fibers[j], f);
        returned += f.wait == Wait::done;
        if (f.wait == Wait::done || seen) continue;
        add("%sthreads ", used ? "; " : "");
        for (unsigned j = i, count = 0; j < s.threads; ++j) {
            if (!same_wait(s.fibers[j], f) || (j > i && same_wait(s.fibers[j - 1], f))) continue;
            unsigned last = j;
            while (last + 1 < s.threads && same_wait(s.fibers[last + 1], f)) ++last;
            add(count++ ? ", %u" : "%u", j);
            if (last > j) add("-%u", last);
        }
        add(" wait at %s", f.op);
        if (f.wait == Wait::warp) add(" with mask 0x%08x", f.mask);
        add(" (%s:%d)", base_name(f.file), f.line);
    }
    fail("deadlock in block (%u, %u, %u): %s; %u threads returned. A __syncthreads() waits for "
         "every live thread of the block at the same line, a warp operation for every live "
         "lane of its mask.",
         s.block_idx.x, s.block_idx.y, s.block_idx.z, text, returned);
}

inline bool run_block(State& s) {
    for (unsigned i = 0; i < s.threads; ++i) s.fibers[i].wait = Wait::runnable;
    if (s.shared_bytes) memset(s.dynamic_shared, 0xFF, s.shared_bytes);
    for (;;) {
        // A round: the runnable threads, in order, each passing on to the next (pass_on).
        Fiber *first = s.fibers, *end = s.fibers + s.threads;
        while (first != end && first->wait != Wait::runnable) ++first;
        if (first != end) {
            s.current = first;
            context_switch(s.scheduler, first->context);
        }
        if (s.failed) return false;
        bool live = false;
        for (Fiber* f = s.fibers; f != end && !live; ++f) live = f->wait != Wait::done;
        if (!live) return true;
        if (!release_warps(s) && !release_block(s)) {
            report_deadlock(s);
            return false;
        }
    }
}

inline bool check_launch(const cf_launch& launch) {
    const dim3 &g = launch.grid, &b = launch.block;
    unsigned long long threads = 1ull * b.x * b.y * b.z;
    if (!g.x || !g.y || !g.z || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535)
        fail("invalid launch: grid (%u, %u, %u) must be from (1, 1, 1) to (2^31-1, 65535, 65535)",
             g.x, g.y, g.z);
    else if (!threads || b.x > 1024 || b.y > 1024 || b.z > 64 || threads > kMaxBlockThreads)
        fail("invalid launch: block (%u, %u, %u) has %llu threads, but a block holds 1 to 1024 "
             "(x, y <= 1024, z <= 64)",
             b.x, b.y, b.z, threads);
    else if (launch.shared_bytes > kMaxSharedBytes)
        fail("invalid launch: %llu bytes of dynamic shared memory, more than the %llu of sm_90",
             launch.shared_bytes, kMaxSharedBytes);
    return !state.failed;
}

// Run every block of the grid; false (with state.error) if the launch was refused or failed.
inline bool run_blocks(State& s, const cf_launch& launch) {
    if (!check_launch(launch)) return false;
    const dim3 &g = launch.grid, &b = launch.block;
    unsigned threads = b.x * b.y * b.z;
    Pool& p = pool();
    if (!reserve(p, threads, launch.shared_bytes)) return false;
    s.fibers = p.fibers;
    s.threads = threads;
    s.block_dim = b;
    s.grid_dim = g;
    s.dynamic_shared = launch.shared_bytes ? p.shared : nullptr;
    s.shared_bytes = launch.shared_bytes;
    for (unsigned i = 0; i < threads; ++i) {
        Fiber& f = s.fibers[i];
        f.linear = i;
        f.lane = i % 32;
        f.thread_idx = {i % b.x, i / b.x % b.y, i / (b.x * b.y)};
        // Stack tops 64 bytes apart modulo a page, or every fiber's frames share cache sets.
        context_init(f.context, p.stack(i), kStackBytes - i % 64 * 64, fiber_main);
    }
    for (unsigned z = 0; z < g.z; ++z)
        for (unsigned y = 0; y < g.y; ++y)
            for (unsigned x = 0; x < g.x; ++x) {
                s.block_idx = {x, y, z};
                if (!run_block(s)) return false;
            }
    return true;
}

inline void run_grid(const cf_launch* launch, void (*invoke)(const void*), const void* body) {
    std::lock_guard<std::mutex> guard(lock);
    State& s = state;
    s.failed = false;
    s.error[0] = '\0';
    s.invoke = invoke;
    s.body = body;
    report.failed = !run_blocks(s, *launch);
    if (report.failed) memcpy(report.error, s.error, sizeof report.error);
    s.current = nullptr;
    s.body = nullptr;
}

}  // namespace cf_emu

// Run `body` (one thread's work) over the launch's grid; a failure is left in cf_last_error().
template <class F>
inline void cf_run_grid(const cf_launch* launch, F body) {
    cf_emu::run_grid(
        launch, [](const void* f) { (*static_cast<const F*>(f))(); }, &body);
}

// The failure of this OS thread's last launch (invalid shape, deadlock, misused warp
// operation), or null if it succeeded.
extern "C" __attribute__((weak, visibility("default"))) const char* cf_last_error(void) {
    return cf_emu::report.failed ? cf_emu::report.error : nullptr;
}

// **** What the kernels call ****

#define threadIdx (cf_emu::thread_idx())
#define blockIdx (cf_emu::block_idx())
#define blockDim (cf_emu::block_dim())
#define gridDim (cf_emu::grid_dim())

#define __syncthreads() cf_emu::sync_block(__FILE__, __LINE__)
#define __syncwarp(...) cf_emu::sync_warp(__FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_sync(...) cf_emu::shfl_idx(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) cf_emu::shfl_up(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) cf_emu::shfl_down(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) cf_emu::shfl_xor(__FILE__, __LINE__, __VA_ARGS__)
#define __ballot_sync(...) cf_emu::ballot(__FILE__, __LINE__, __VA_ARGS__)
#define __any_sync(...) cf_emu::any(__FILE__, __LINE__, __VA_ARGS__)
#define __all_sync(...) cf_emu::all(__FILE__, __LINE__, __VA_ARGS__)

inline void __threadfence() {}
inline void __threadfence_block() {}

template <class T>
inline T __ldg(const T* p) {
    return *p;
}

// CUDA's min/max over any two arithmetic types: the usual conversions, fminf/fmaxf for reals.
template <class A, class B,
          class = typename std::enable_if<std::is_arithmetic<A>::value &&
                                          std::is_arithmetic<B>::value>::type>
inline typename std::common_type<A, B>::type min(A a, B b) {
    typedef typename std::common_type<A, B>::type C;
    if constexpr (std::is_floating_point<C>::value) return std::fmin(C(a), C(b));
    else return C(b) < C(a) ? C(b) : C(a);
}

template <class A, class B,
          class = typename std::enable_if<std::is_arithmetic<A>::value &&
                                          std::is_arithmetic<B>::value>::type>
inline typename std::common_type<A, B>::type max(A a, B b) {
    typedef typename std::common_type<A, B>::type C;
    if constexpr (std::is_floating_point<C>::value) return std::fmax(C(a), C(b));
    else return C(a) < C(b) ? C(b) : C(a);
}

// Atomics: a fiber never switches inside one, so a plain read-modify-write is atomic.
#define CF_ATOMIC(name, type, update)        \
    inline type name(type* address, type v) { \
        type old = *address;                  \
        *address = update;                    \
        return old;                           \
    }
CF_ATOMIC(atomicAdd, float, old + v)
CF_ATOMIC(atomicAdd, double, old + v)
CF_ATOMIC(atomicAdd, int, old + v)
CF_ATOMIC(atomicAdd, unsigned int, old + v)
CF_ATOMIC(atomicAdd, unsigned long long, old + v)
CF_ATOMIC(atomicSub, int, old - v)
CF_ATOMIC(atomicSub, unsigned int, old - v)
CF_ATOMIC(atomicMax, int, old < v ? v : old)
CF_ATOMIC(atomicMax, unsigned int, old < v ? v : old)
CF_ATOMIC(atomicMax, long long, old < v ? v : old)
CF_ATOMIC(atomicMax, unsigned long long, old < v ? v : old)
CF_ATOMIC(atomicMin, int, v < old ? v : old)
CF_ATOMIC(atomicMin, unsigned int, v < old ? v : old)
CF_ATOMIC(atomicMin, long long, v < old ? v : old)
CF_ATOMIC(atomicMin, unsigned long long, v < old ? v : old)
CF_ATOMIC(atomicExch, int, v)
CF_ATOMIC(atomicExch, unsigned int, v)
CF_ATOMIC(atomicExch, unsigned long long, v)
CF_ATOMIC(atomicExch, float, v)
#undef CF_ATOMIC

template <class T>
inline T atomicCAS(T* address, T compare, T v) {
    static_assert(std::is_integral<T>::value, "atomicCAS takes int, unsigned or 64-bit words");
    T old = *address;
    if (old == compare) *address = v;
    return old;
}

// Math: <math.h> gives expf, logf, tanhf, erff, sqrtf, fmaxf, fma, INFINITY, ... and the float
// overloads of exp, log, sqrt; these are CUDA's extras. The fast intrinsics are exact here.
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __saturatef(float x) { return fminf(fmaxf(x, 0.0f), 1.0f); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __powf(float x, float y) { return powf(x, y); }

inline int __float_as_int(float x) { return cf_emu::from_bits<int>(cf_emu::to_bits(x)); }
inline unsigned __float_as_uint(float x) { return cf_emu::from_bits<unsigned>(cf_emu::to_bits(x)); }
inline float __int_as_float(int x) { return cf_emu::from_bits<float>(cf_emu::to_bits(x)); }
inline float __uint_as_float(unsigned x) { return cf_emu::from_bits<float>(cf_emu::to_bits(x)); }
inline long long __double_as_longlong(double x) {
    return cf_emu::from_bits<long long>(cf_emu::to_bits(x));
}
inline double __longlong_as_double(long long x) {
    return cf_emu::from_bits<double>(cf_emu::to_bits(x));
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return x ? __builtin_clz(unsigned(x)) : 32; }
inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }

#pragma GCC visibility pop
