package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/vwire/vwire/gateway/dataplane"
	"github.com/vwire/vwire/internal/atomicfile"
)

// Reconciler brings a backend to the desired ends: it applies those that
// are missing or differ, removes the ones no longer desired, retries
// failures with backoff and looks again every Resync. The desired state is
// kept in a file, so that a restarted gateway reprograms exactly it.
type Reconciler struct {
	backend dataplane.Backend
	log     *slog.Logger
	// Resync is how often the backend is checked without a change.
	Resync time.Duration

	// One end's backend calls at a time, Set's, Delete's and a pass's, each
	// checking what is desired once it holds its end's lock (striped by id).
	ends [64]sync.Mutex

	mu      sync.Mutex
	desired map[string]dataplane.End
	file    *atomicfile.Journal // desired, a change a line
	errs    map[string]error    // the last failure of each end, until it succeeds
	failed  int64               // backend calls that failed, since the start
	kick    chan struct{}
}

// NewReconciler loads the desired state from file (if it exists).
func NewReconciler(backend dataplane.Backend, file string, log *slog.Logger) (*Reconciler, error) {
	r := &Reconciler{backend: backend, log: log, Resync: 30 * time.Second,
		desired: map[string]dataplane.End{}, errs: map[string]error{}, kick: make(chan struct{}, 1)}
	j, values, err := atomicfile.OpenJournal(file, 0o600, legacyEnds)
	if err != nil {
		return nil, fmt.Errorf("desired state: %w", err)
	}
	r.file = j
	for id, v := range values {
		var e dataplane.End
		if err := json.Unmarshal(v, &e); err != nil || e.ID != id {
			return nil, fmt.Errorf("desired state %s: end %q: not an end (%v)", file, id, err)
		}
		r.desired[id] = e
	}
	return r, nil
}

// legacyEnds reads the desired state as it was kept before its journal:
// a JSON list of the ends.
func legacyEnds(b []byte) (map[string]json.RawMessage, error) {
	var ends []json.RawMessage
	if err := json.Unmarshal(b, &ends); err != nil {
		return nil, err
	}
	out := map[string]json.RawMessage{}
	for _, raw := range ends {
		var e struct{ ID string }
		if err := json.Unmarshal(raw, &e); err != nil || e.ID == "" {
			return nil, fmt.Errorf("an end without an id: %s", raw)
		}
		out[e.ID] = raw
	}
	return out, nil
}

// Close closes the desired state's file; what was saved stays.
func (r *Reconciler) Close() error { return r.file.Close() }

// Set makes e desired and reconciles at once; it returns the backend's
// error for e (the reconciler keeps retrying in the background).
func (r *Reconciler) Set(ctx context.Context, e dataplane.End) error {
	return r.SetAfter(ctx, e, nil)
}

// SetAfter is Set with first (if not nil) run before e's desired state is
// written: what must be on disk before it. The backend applies e
// meanwhile, beside both writes (each waits for its disk, the apply for
// the kernel); a crash before they are done leaves an end the next start
// removes, as it is tagged and not desired. If first or the write fails,
// a new end is removed again, and the error returned.
func (r *Reconciler) SetAfter(ctx context.Context, e dataplane.End, first func() error) error {
	unlock := r.lockEnd(e.ID)
	defer unlock()
	_, existed := r.Get(e.ID)
	applied := make(chan error, 1)
	go func() { applied <- r.backend.Apply(ctx, e) }()
	var err error
	if first != nil {
		err = first()
	}
	if err == nil {
		err = r.change(e.ID, &e)
	}
	aerr := <-applied
	if err != nil {
		if !existed {
			_ = r.backend.Remove(ctx, e.ID)
		} else {
			r.poke() // what is still desired goes back in
		}
		return err
	}
	if aerr != nil {
		r.fail(e.ID, aerr)
		return aerr
	}
	r.fail(e.ID, nil)
	return nil
}

// Remember records e as desired without applying it: for what the backend
// chose while applying (a WireGuard port), so a restart asks for it again.
func (r *Reconciler) Remember(e dataplane.End) error {
	return r.change(e.ID, &e)
}

// change makes e what is desired for id (nil: nothing) and saves it, with
// the changes of the same moment.
func (r *Reconciler) change(id string, e *dataplane.End) error {
	r.mu.Lock()
	old, ok := r.desired[id]
	var n uint64
	var err error
	switch {
	case e == nil && !ok, e != nil && ok && old.String() == e.String(): // a refresh writes nothing
		r.mu.Unlock()
		return nil
	case e == nil:
		delete(r.desired, id)
		n = r.file.Delete(id)
	default:
		if n, err = r.file.Put(id, e); err == nil {
			r.desired[id] = *e
		}
	}
	r.mu.Unlock()
	if err != nil {
		return err
	}
	return r.file.Save(n)
}

// Record makes e desired in place of old, if old is still what is desired
// for its id (an end removed meanwhile stays removed), without applying
// it: for what the backend did itself (a peer's address WireGuard learnt),
// which a restart must ask for again. It reports whether it did.
func (r *Reconciler) Record(old, e dataplane.End) (bool, error) {
	r.mu.Lock()
	if cur, ok := r.desired[old.ID]; !ok || cur.String() != old.String() {
		r.mu.Unlock()
		return false, nil
	}
	n, err := r.file.Put(e.ID, e)
	if err == nil {
		r.desired[e.ID] = e
	}
	r.mu.Unlock()
	if err != nil {
		return false, err
	}
	return true, r.file.Save(n)
}

// Get is the desired end id.
func (r *Reconciler) Get(id string) (dataplane.End, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.desired[id]
	return e, ok
}

// Delete makes end id undesired and removes it.
func (r *Reconciler) Delete(ctx context.Context, id string) error {
	unlock := r.lockEnd(id)
	defer unlock()
	if err := r.change(id, nil); err != nil {
		return err
	}
	if err := r.backend.Remove(ctx, id); err != nil {
		r.fail(id, err)
		r.poke()
		return err
	}
	r.fail(id, nil)
	return nil
}

// Desired lists the desired ends, by id.
func (r *Reconciler) Desired() []dataplane.End {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]dataplane.End, 0, len(r.desired))
	for _, e := range r.desired {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// fail notes end id's last error (nil: it succeeded; id "": a failure of
// no desired end's, only counted).
func (r *Reconciler) fail(id string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		delete(r.errs, id)
		return
	}
	r.failed++
	if id != "" {
		r.errs[id] = err
	}
}

// Counts are the ends desired now and the backend calls that failed
// since the start.
func (r *Reconciler) Counts() (desired int, failed int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.desired), r.failed
}

func (r *Reconciler) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run reconciles until ctx ends: at once, after every failure with
// backoff (100 ms doubling to Resync), and every Resync.
func (r *Reconciler) Run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for {
		wait := r.Resync
		if n := r.Reconcile(ctx); n > 0 {
			wait, backoff = backoff, min(2*backoff, r.Resync)
		} else {
			backoff = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
		case <-time.After(wait):
		}
	}
}

// reconcileWorkers is how many ends a reconcile pass applies at once.
const reconcileWorkers = 4

// Reconcile makes one pass and returns how many ends failed.
func (r *Reconciler) Reconcile(ctx context.Context) (failed int) {
	actual, err := r.backend.List(ctx)
	if err != nil {
		r.log.Warn("listing the data plane failed", "err", err)
		r.fail("", err)
		return 1
	}
	have := map[string]dataplane.End{}
	for _, e := range actual {
		have[e.ID] = e
	}
	// A few ends at once: after a restart each of a thousand is applied
	// again (its tunnel's routes died with the process), and one after
	// another they took some 2 s.
	var applies errgroup.Group
	applies.SetLimit(reconcileWorkers)
	var applyFailed atomic.Int64
	for _, snap := range r.Desired() {
		applies.Go(func() error {
			unlock := r.lockEnd(snap.ID)
			want, ok := r.Get(snap.ID) // as it is now, not as the pass began
			if !ok || (have[want.ID].ID != "" && equal(have[want.ID], want)) {
				unlock()
				return nil
			}
			err := r.backend.Apply(ctx, want)
			unlock()
			if err != nil {
				r.log.Warn("programming a vWire end failed; retrying", "id", want.ID, "err", err)
				r.fail(want.ID, err)
				applyFailed.Add(1)
				return nil // (the others go on)
			}
			r.fail(want.ID, nil)
			r.log.Info("vWire end programmed", "id", want.ID)
			return nil
		})
	}
	applies.Wait()
	failed = int(applyFailed.Load())
	for id := range have {
		unlock := r.lockEnd(id)
		if _, ok := r.Get(id); ok {
			unlock()
			continue
		}
		err := r.backend.Remove(ctx, id)
		unlock()
		if err != nil {
			r.log.Warn("removing a leftover vWire end failed; retrying", "id", id, "err", err)
			r.fail("", err)
			failed++
			continue
		}
		r.log.Info("leftover vWire end removed", "id", id)
	}
	return failed
}

// lockEnd takes end id's lock and returns its release.
func (r *Reconciler) lockEnd(id string) func() {
	h := fnv.New32a()
	h.Write([]byte(id))
	m := &r.ends[h.Sum32()%uint32(len(r.ends))]
	m.Lock()
	return m.Unlock
}

// equal compares what a backend reports with what is desired.
func equal(got, want dataplane.End) bool {
	if want.Interface == "" {
		want.Interface = dataplane.DefaultInterface
	}
	if want.MTU == 0 {
		want.MTU = got.MTU // the backend's default
	}
	return got.String() == want.String()
}
