package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vwire/vwire/gateway/dataplane"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// flaky fails the first n applies of each end.
type flaky struct {
	*dataplane.Fake
	mu    sync.Mutex
	n     int
	tries map[string]int
}

func (f *flaky) Apply(ctx context.Context, e dataplane.End) error {
	f.mu.Lock()
	f.tries[e.ID]++
	fail := f.tries[e.ID] <= f.n
	f.mu.Unlock()
	if fail {
		return errors.New("device busy")
	}
	return f.Fake.Apply(ctx, e)
}

func end(id, addr string) dataplane.End {
	return dataplane.End{ID: id, NetNS: "ns-" + id, Interface: "nsm0", MTU: 1420, Addrs: []netip.Prefix{netip.MustParsePrefix(addr)}}
}

// The reconciler programs what is desired, removes leftovers, retries
// failures, and a restarted one reprograms the same state from its file.
func TestReconcile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "desired.json")
	backend := &flaky{Fake: dataplane.NewFake(), n: 2, tries: map[string]int{}}
	backend.Fake.Apply(context.Background(), end("leftover", "172.31.9.1/32")) // from before a crash
	r, err := NewReconciler(backend, file, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Set(context.Background(), end("c1", "172.31.0.1/31")); err == nil {
		t.Fatal("the first apply was meant to fail")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	want := end("c1", "172.31.0.1/31").String()
	waitFor(t, "c1 programmed after retries and the leftover removed", func() bool { return backend.String() == want })

	// A restart: a new reconciler, an empty data plane (say the gateway's
	// node rebooted): the same state comes back.
	fresh := &flaky{Fake: dataplane.NewFake(), tries: map[string]int{}}
	r2, err := NewReconciler(fresh, file, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if n := r2.Reconcile(context.Background()); n != 0 || fresh.String() != want {
		t.Errorf("after restart: %d failures, state %q", n, fresh.String())
	}
	// Something changed behind its back is put right on the next pass.
	fresh.Fake.Apply(context.Background(), end("c1", "172.31.0.9/31"))
	r2.Reconcile(context.Background())
	if fresh.String() != want {
		t.Errorf("drift not repaired: %q", fresh.String())
	}
	if err := r2.Delete(context.Background(), "c1"); err != nil || fresh.String() != "" {
		t.Errorf("delete: %v, %q", err, fresh.String())
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("not within 10s: %s", what)
}

// gated blocks the applies of the ends whose ids begin with prefix until
// released.
type gated struct {
	*dataplane.Fake
	prefix  string
	entered chan struct{}
	release chan struct{}
}

func (g *gated) Apply(ctx context.Context, e dataplane.End) error {
	if strings.HasPrefix(e.ID, g.prefix) {
		g.entered <- struct{}{}
		<-g.release
	}
	return g.Fake.Apply(ctx, e)
}

// A pass works from the desired state of the moment it reaches each end:
// an end deleted, or changed, while the pass was busy with another is not
// put back as it was (it used to come back until the next pass, 30 s).
func TestReconcileDoesNotResurrect(t *testing.T) {
	g := &gated{Fake: dataplane.NewFake(), prefix: "a", entered: make(chan struct{}), release: make(chan struct{})}
	r, err := NewReconciler(g, filepath.Join(t.TempDir(), "desired.json"), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var first []string // as many as the pass applies at once
	for i := range reconcileWorkers {
		e := end(fmt.Sprintf("a%d", i), fmt.Sprintf("172.31.1.%d/32", i))
		first = append(first, e.String())
		if err := r.Remember(e); err != nil { // desired, not yet applied
			t.Fatal(err)
		}
	}
	for _, e := range []dataplane.End{end("b", "172.31.0.2/32"), end("c", "172.31.0.3/32")} {
		if err := r.Remember(e); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	go func() { r.Reconcile(ctx); close(done) }()
	for range reconcileWorkers {
		<-g.entered // the pass is applying the a's; b and c come after them
	}
	if err := r.Delete(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if err := r.Set(ctx, end("c", "172.31.0.9/32")); err != nil {
		t.Fatal(err)
	}
	close(g.release)
	<-done
	if got, want := g.String(), strings.Join(append(first, end("c", "172.31.0.9/32").String()), "\n"); got != want {
		t.Errorf("after the pass:\n%s\nwant\n%s", got, want)
	}
}

// SetAfter programs the end while what must be on disk before it is
// written; when that write fails, a new end is not left programmed, and
// one that was there before gets its old state back.
func TestSetAfterFailedWrite(t *testing.T) {
	ctx := context.Background()
	backend := dataplane.NewFake()
	r, err := NewReconciler(backend, filepath.Join(t.TempDir(), "desired.json"), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	full := errors.New("no space left on device")
	if err := r.SetAfter(ctx, end("new", "172.31.0.1/32"), func() error { return full }); !errors.Is(err, full) {
		t.Fatalf("SetAfter: %v, want the write's error", err)
	}
	if got := backend.String(); got != "" {
		t.Errorf("a new end whose record was not written stays programmed: %s", got)
	}
	if _, ok := r.Get("new"); ok {
		t.Error("a new end whose record was not written is desired")
	}
	old := end("old", "172.31.0.2/32")
	if err := r.Set(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := r.SetAfter(ctx, end("old", "172.31.0.3/32"), func() error { return full }); !errors.Is(err, full) {
		t.Fatalf("SetAfter: %v, want the write's error", err)
	}
	if got, ok := r.Get("old"); !ok || got.String() != old.String() {
		t.Errorf("desired after the failed change: %v, want %v", got, old)
	}
	if n := r.Reconcile(ctx); n != 0 || backend.String() != old.String() {
		t.Errorf("after a pass (%d failed): %s, want %s", n, backend.String(), old)
	}
}

// A gateway upgraded from a version that kept its desired ends as one JSON
// list reprograms them, and keeps them in its journal from then on.
func TestReconcilerReadsStateOfBefore(t *testing.T) {
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "ends.json")
	before, _ := json.Marshal([]dataplane.End{end("c1", "172.31.0.1/32"), end("c2", "172.31.0.2/32")})
	if err := os.WriteFile(file, before, 0o600); err != nil {
		t.Fatal(err)
	}
	backend := dataplane.NewFake()
	r, err := NewReconciler(backend, file, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if n := r.Reconcile(ctx); n != 0 || strings.Count(backend.String(), "ns-c") != 2 {
		t.Fatalf("the ends of before: %d failed, programmed %s", n, backend)
	}
	if err := r.Delete(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	r2, err := NewReconciler(dataplane.NewFake(), file, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if got := r2.Desired(); len(got) != 1 || got[0].String() != end("c2", "172.31.0.2/32").String() {
		t.Errorf("after a change and a restart: %v", got)
	}
	os.WriteFile(file, []byte(`[{"NetNS":"x"}]`), 0o600)
	if _, err := NewReconciler(dataplane.NewFake(), file, slog.Default()); err == nil || !strings.Contains(err.Error(), "without an id") {
		t.Errorf("a list of before with an end without id: %v", err)
	}
}

// An end whose apply hangs (a namespace whose netlink does not answer)
// holds no other end back: the pass applies the rest meanwhile. After a
// restart every end is applied again, and one after another a thousand
// took some 2 s.
func TestReconcileAStuckEndHoldsNoOtherBack(t *testing.T) {
	g := &gated{Fake: dataplane.NewFake(), prefix: "stuck", entered: make(chan struct{}, 1), release: make(chan struct{})}
	r, err := NewReconciler(g, filepath.Join(t.TempDir(), "desired.json"), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ids := []string{"stuck", "x1", "x2", "x3", "x4", "x5", "x6"}
	for i, id := range ids {
		if err := r.Remember(end(id, fmt.Sprintf("172.31.2.%d/32", i))); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	go func() { r.Reconcile(ctx); close(done) }()
	<-g.entered
	waitFor(t, "the other ends applied while one hangs", func() bool { return strings.Count(g.String(), "\n")+1 == len(ids)-1 })
	close(g.release)
	<-done
	if n := strings.Count(g.String(), "\n") + 1; n != len(ids) {
		t.Errorf("%d ends after the pass, want %d:\n%s", n, len(ids), g.String())
	}
}
