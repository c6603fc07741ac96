package federation

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// The CA's rotation steps change the bundle and the issuing root in order,
// and the state survives reopening the directory.
func TestCARotationSteps(t *testing.T) {
	dir := t.TempDir()
	ca, err := OpenCA(dir, td)
	if err != nil {
		t.Fatal(err)
	}
	old := ca.Bundle().X509Authorities()[0]
	if err := ca.Prepare(); err != nil {
		t.Fatal(err)
	}
	if err := ca.Prepare(); err == nil {
		t.Error("a second Prepare during a rotation was accepted")
	}
	reopened, err := OpenCA(dir, td)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(reopened.Bundle().X509Authorities()); n != 2 {
		t.Fatalf("prepared: %d roots published after reopening, want 2", n)
	}
	svid, _ := reopened.Issue(RegistryID(td), time.Hour)
	if svid.Certificates[0].CheckSignatureFrom(old) != nil {
		t.Error("issuance switched before Activate")
	}
	if err := reopened.Activate(); err != nil {
		t.Fatal(err)
	}
	svid, _ = reopened.Issue(RegistryID(td), time.Hour)
	if svid.Certificates[0].CheckSignatureFrom(old) == nil {
		t.Error("still issuing from the old root after Activate")
	}
	if err := reopened.Retire(); err != nil {
		t.Fatal(err)
	}
	again, err := OpenCA(dir, td)
	if err != nil {
		t.Fatal(err)
	}
	roots := again.Bundle().X509Authorities()
	if len(roots) != 1 || roots[0].Equal(old) {
		t.Errorf("after Retire the bundle is %d roots (old one kept: %v)", len(roots), len(roots) > 0 && roots[0].Equal(old))
	}
}

// Domain A calls domain B continuously, on one pooled connection and on a
// new connection (a new handshake) each time, while B rotates its CA twice
// and A follows B's bundle endpoint: not one call fails.
func TestRotationWithoutLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about 12 s")
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	caA, err := OpenCA(filepath.Join(t.TempDir(), "a"), td)
	if err != nil {
		t.Fatal(err)
	}
	caB, err := OpenCA(filepath.Join(t.TempDir(), "b"), tdB)
	if err != nil {
		t.Fatal(err)
	}

	// B: an authenticated gRPC service for A's members, and its bundle endpoint.
	srcB, err := caB.NewSource(ProxyID(tdB), time.Hour, NewTrust(caB.Bundle(), caA.Bundle()), log)
	if err != nil {
		t.Fatal(err)
	}
	defer srcB.Close()
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := grpc.NewServer(grpc.Creds(ServerCredentials(srcB, AuthorizeMember(td), log)))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	defer srv.Stop()
	bundleLis, _ := net.Listen("tcp", "127.0.0.1:0")
	ep, err := ServeBundleEndpoint(bundleLis, tdB, func() (*spiffebundle.Bundle, error) {
		b := spiffebundle.FromX509Bundle(caB.Bundle())
		b.SetRefreshHint(MinRefresh)
		return b, nil
	}, srcB, log)
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()

	// A: follows B's bundle; its client accepts only B's proxy.
	trustA := NewTrust(caA.Bundle())
	f, err := NewFollower(Peer{Domain: "b.example", TrustDomain: tdB, BundleEndpointURL: ep.URL(), EndpointID: ProxyID(tdB)},
		spiffebundle.FromX509Bundle(caB.Bundle()), trustA, log)
	if err != nil {
		t.Fatal(err)
	}
	f.Start()
	defer f.Close()
	srcA, err := caA.NewSource(ProxyID(td), time.Hour, trustA, log)
	if err != nil {
		t.Fatal(err)
	}
	defer srcA.Close()
	creds := ClientCredentials(srcA, AuthorizeOf(ProxyID(tdB)))
	pooled, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer pooled.Close()

	var calls, failures atomic.Int64
	call := func(conn *grpc.ClientConn) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		calls.Add(1)
		if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			failures.Add(1)
			t.Errorf("call failed: %v", err)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			call(pooled)
			fresh, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(creds))
			if err != nil {
				t.Error(err)
				continue
			}
			call(fresh)
			fresh.Close()
		}
	}()

	original := caB.Bundle()
	for i := 0; i < 2; i++ {
		if err := caB.Rotate(2500*time.Millisecond, 2*time.Second); err != nil {
			t.Fatal(err)
		}
		for step, _ := caB.RotationStatus(); step != ""; step, _ = caB.RotationStatus() {
			if err := caB.Tick(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(500 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d calls, %d failed, across two rotations", calls.Load(), failures.Load())
	final := caB.Bundle()
	if len(final.X509Authorities()) != 1 || final.Equal(original) {
		t.Errorf("after two rotations B's bundle is %v", final.X509Authorities())
	}
	if got, _ := trustA.GetX509BundleForTrustDomain(tdB); !got.Equal(final) {
		t.Error("A does not trust B's final bundle")
	}
	if calls.Load() < 100 {
		t.Errorf("only %d calls: the test did not exercise the rotation", calls.Load())
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
