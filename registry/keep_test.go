package registry_test

import (
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

// A kept registration outlives its lifetime, comes back when the registry
// loses it, and is gone after Close.
func TestKeepRegistered(t *testing.T) {
	d := startDomain(t, "a.example")
	nse, admin := d.client("/nse"), d.admin()
	ep := &registrypb.Endpoint{Name: "kept", NetworkServiceNames: []string{"svc"}}
	reg, err := registry.KeepRegistered(ctx(t), nse, ep, 2*time.Second, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	time.Sleep(3 * time.Second)
	if _, err := admin.GetEndpoint(ctx(t), &registrypb.GetEndpointRequest{Name: "kept"}); err != nil {
		t.Fatalf("after 1.5 lifetimes: %v", err)
	}
	// Lost behind its back (as if etcd lost it): registered again.
	if _, err := nse.UnregisterEndpoint(ctx(t), &registrypb.UnregisterEndpointRequest{Name: "kept"}); err != nil {
		t.Fatal(err)
	}
	if !waitFor(func() bool {
		_, err := admin.GetEndpoint(ctx(t), &registrypb.GetEndpointRequest{Name: "kept"})
		return err == nil
	}) {
		t.Fatal("a lost registration was not registered again")
	}
	// A name owned by someone else is refused up front.
	if _, err := registry.KeepRegistered(ctx(t), d.client("/other"), ep, 0, slog.Default()); status.Code(err) != codes.PermissionDenied {
		t.Errorf("another owner's name: %v", err)
	}
	reg.Close()
	if _, err := admin.GetEndpoint(ctx(t), &registrypb.GetEndpointRequest{Name: "kept"}); status.Code(err) != codes.NotFound {
		t.Errorf("after Close: %v, want NotFound", err)
	}
}
