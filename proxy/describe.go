package proxy

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry"
)

// Describe implements proxypb.OperatorServer: a connection as this domain
// stores it with its end's tunnel and counters on the gateway in this
// process, or a service with what its rules select now.
func (o *Operator) Describe(ctx context.Context, req *proxypb.DescribeRequest) (*proxypb.DescribeResponse, error) {
	if err := o.admin(ctx, "describe"); err != nil {
		return nil, err
	}
	switch what := req.GetWhat().(type) {
	case *proxypb.DescribeRequest_Connection:
		d, err := o.describeConnection(ctx, what.Connection)
		if err != nil {
			return nil, err
		}
		return &proxypb.DescribeResponse{What: &proxypb.DescribeResponse_Connection{Connection: d}}, nil
	case *proxypb.DescribeRequest_Service:
		d, err := o.describeService(ctx, what.Service)
		if err != nil {
			return nil, err
		}
		return &proxypb.DescribeResponse{What: &proxypb.DescribeResponse_Service{Service: d}}, nil
	}
	return nil, status.Error(codes.InvalidArgument, "describe a connection or a service")
}

func (o *Operator) describeConnection(ctx context.Context, id string) (*proxypb.ConnectionDescription, error) {
	if err := ValidID(id); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	c, err := o.Conns.Get(ctx, id)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	if c == nil {
		return nil, status.Errorf(codes.NotFound, "connection %q is not known in %q (closed, or expired)", id, o.Own)
	}
	d := &proxypb.ConnectionDescription{Connection: c, Tunnel: Tunnel(c.GetMechanism())}
	if o.Gateway == nil {
		return d, nil
	}
	// This domain's end is the client's or the endpoint's (both, within
	// the domain); its peer gateway is the other side's.
	if wg := c.GetMechanism().GetWireguard(); wg != nil {
		for _, key := range [][]byte{wg.GetDstPublicKey(), wg.GetSrcPublicKey()} {
			if tun, ok := o.Gateway.Tunnel(key); ok {
				d.Wireguard = &proxypb.TunnelState{SentBytes: tun.Sent, ReceivedBytes: tun.Received}
				if !tun.LastHandshake.IsZero() {
					d.Wireguard.LastHandshake = timestamppb.New(tun.LastHandshake)
				}
				break
			}
		}
	}
	for _, end := range []string{"c-" + id, "e-" + id} {
		if counters, ok := o.Gateway.EndCounters(end); ok {
			d.Interface = counters
			break
		}
	}
	return d, nil
}

func (o *Operator) describeService(ctx context.Context, name string) (*proxypb.ServiceDescription, error) {
	if err := registry.ValidateLabel(name); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "network service name %v", err)
	}
	svc, eps, sels, err := o.Store.Selections(ctx, name)
	if err != nil {
		return nil, registry.ToStatus(err)
	}
	d := &proxypb.ServiceDescription{Service: svc, Endpoints: eps}
	for _, m := range sels {
		ms := &proxypb.MatchSelection{SourceSelector: m.Source, Fallthrough: m.Fallthrough, AllEndpoints: m.AllEndpoints}
		for _, r := range m.Routes {
			ms.Routes = append(ms.Routes, &proxypb.RouteSelection{DestinationSelector: r.Destination, PerClient: r.PerClient, Endpoints: r.Endpoints})
		}
		d.Matches = append(d.Matches, ms)
	}
	return d, nil
}
