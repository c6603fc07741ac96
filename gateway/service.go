package gateway

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vwire/vwire/proxy"
	"github.com/vwire/vwire/proxy/proxypb"
)

// Service is the gateway as its domain's proxy calls it when the gateway
// runs as its own process (`vwire gateway`): program and remove one end
// of a vWire. Its listener admits the domain's proxy only.
type Service struct {
	proxypb.UnimplementedGatewayServer
	G *Gateway
}

func side(s string) (proxy.Side, error) {
	switch proxy.Side(s) {
	case proxy.ClientSide, proxy.EndpointSide:
		return proxy.Side(s), nil
	}
	return "", status.Errorf(codes.InvalidArgument, "side %q: want client or endpoint", s)
}

// Apply implements proxypb.GatewayServer.
func (s *Service) Apply(ctx context.Context, req *proxypb.GatewayRequest) (*proxypb.Connection, error) {
	sd, err := side(req.GetSide())
	if err != nil {
		return nil, err
	}
	var out *proxypb.Connection
	if sd == proxy.EndpointSide {
		out, err = s.G.ApplyEndpoint(ctx, req.GetConnection(), req.GetEndpointUrl())
	} else {
		out, err = s.G.Apply(ctx, sd, req.GetConnection())
	}
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return out, nil
}

// Remove implements proxypb.GatewayServer.
func (s *Service) Remove(ctx context.Context, req *proxypb.GatewayRequest) (*proxypb.GatewayRemoveResponse, error) {
	sd, err := side(req.GetSide())
	if err != nil {
		return nil, err
	}
	if err := s.G.Remove(ctx, sd, req.GetConnection()); err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &proxypb.GatewayRemoveResponse{}, nil
}
