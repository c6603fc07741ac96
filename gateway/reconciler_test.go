package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"path/filepath"
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
