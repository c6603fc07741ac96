package gateway

import (
	"context"
	"encoding/base64"
	"testing"

	"github.com/vwire/vwire/endpoint"
	"github.com/vwire/vwire/gateway/dataplane"
	"github.com/vwire/vwire/internal/crashpoint"
	"github.com/vwire/vwire/proxy"
	"github.com/vwire/vwire/proxy/proxypb"
)

// The gateway stopped between the two writes of a vWire end's state (its
// record, its desired end), setting one up or removing one, starts again
// with neither half: no end it knows nothing of, no record of an end that
// is gone, and the endpoint's address pair given back.
func TestGatewayCrashes(t *testing.T) {
	ctx := context.Background()
	for _, at := range []string{"gateway-set", "gateway-remove"} {
		t.Run(at, func(t *testing.T) {
			ep, _ := endpoint.New("172.16.0.0/24", "ep-ns", "IP")
			url := serveEndpoint(t, ep)
			dir := t.TempDir()
			gb := openGateway(t, dir, "10.0.0.2", dataplane.NewFake(), url)
			key, _ := base64.StdEncoding.DecodeString("ZmFrZS1nYXRld2F5LWtleS1hLWFhYWFhYWFhYWFhYWE=")
			req := &proxypb.Connection{Id: "c1", NetworkService: "svc", NetworkServiceEndpointName: "ep1", Payload: "IP",
				Mechanism: &proxypb.Mechanism{Type: &proxypb.Mechanism_Wireguard{Wireguard: &proxypb.WireGuard{SrcIp: "10.0.0.1", SrcPublicKey: key}}}}
			steps := func() { gb.Apply(ctx, proxy.EndpointSide, req) }
			if at == "gateway-remove" {
				if _, err := gb.Apply(ctx, proxy.EndpointSide, req); err != nil {
					t.Fatal(err)
				}
				steps = func() { gb.Remove(ctx, proxy.EndpointSide, req) }
			}
			restore := crashpoint.Set(crashpoint.At(at))
			crashed := crashpoint.Run(steps)
			restore()
			if !crashed {
				t.Fatalf("never reached %s", at)
			}
			if ep.InUse() != 1 {
				t.Fatalf("before the restart the endpoint holds %d pairs, want 1", ep.InUse())
			}
			again := openGateway(t, dir, "10.0.0.2", dataplane.NewFake(), url)
			if ends := again.Ends(); len(ends) != 0 {
				t.Errorf("after the restart the gateway wants %v", ends)
			}
			if len(again.records) != 0 {
				t.Errorf("after the restart the gateway keeps records %v", again.records)
			}
			again.closeOrphans(ctx)
			if ep.InUse() != 0 {
				t.Errorf("the endpoint still holds %d pairs: it was not told", ep.InUse())
			}
			// The vWire can be made again.
			if _, err := again.Apply(ctx, proxy.EndpointSide, req); err != nil {
				t.Errorf("after the restart: %v", err)
			}
		})
	}
}
