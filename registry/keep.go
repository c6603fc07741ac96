package registry

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/vwire/vwire/registry/registrypb"
)

// Registration keeps one endpoint registered: the registering side of an
// expiring registration.
type Registration struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// KeepRegistered registers ep for lifetime (the registry's default if 0)
// and keeps it registered until Close: it refreshes at a third of the
// lifetime, registers again when the registry has lost it (expired, or
// etcd lost it), and retries failures with backoff. The first registration
// happens before it returns, so a refused one (a name owned by another
// SPIFFE ID, an invalid endpoint) is the returned error.
func KeepRegistered(ctx context.Context, c registrypb.RegistryClient, ep *registrypb.Endpoint, lifetime time.Duration, log *slog.Logger) (*Registration, error) {
	req := &registrypb.RegisterEndpointRequest{Endpoint: proto.Clone(ep).(*registrypb.Endpoint)}
	if lifetime > 0 {
		req.Lifetime = durationpb.New(lifetime)
	}
	got, err := c.RegisterEndpoint(ctx, req)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r := &Registration{cancel: cancel, done: make(chan struct{})}
	go r.run(ctx, c, req, got, log)
	return r, nil
}

func (r *Registration) run(ctx context.Context, c registrypb.RegistryClient, req *registrypb.RegisterEndpointRequest, last *registrypb.Endpoint, log *slog.Logger) {
	defer close(r.done)
	name := req.GetEndpoint().GetName()
	period := time.Until(last.GetExpiresAt().AsTime()) / 3
	wait, backoff := period, 100*time.Millisecond
	for {
		select {
		case <-ctx.Done():
			unreg, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := c.UnregisterEndpoint(unreg, &registrypb.UnregisterEndpointRequest{Name: name}); err != nil && status.Code(err) != codes.NotFound {
				log.Warn("unregistering endpoint failed; it expires by itself", "name", name, "err", err)
			}
			return
		case <-time.After(wait):
		}
		ep, err := c.RefreshEndpoint(ctx, &registrypb.RefreshEndpointRequest{Name: name})
		if status.Code(err) == codes.NotFound {
			log.Info("the registry lost the endpoint; registering it again", "name", name)
			ep, err = c.RegisterEndpoint(ctx, req)
		}
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("refreshing endpoint failed; retrying", "name", name, "err", err, "in", backoff)
			}
			wait, backoff = backoff, min(2*backoff, period)
			continue
		}
		period = max(time.Until(ep.GetExpiresAt().AsTime())/3, 100*time.Millisecond)
		wait, backoff = period, 100*time.Millisecond
	}
}

// Close stops refreshing and unregisters the endpoint.
func (r *Registration) Close() {
	r.cancel()
	<-r.done
}
