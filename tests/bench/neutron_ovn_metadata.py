"""The benchmark's real Neutron baseline: neutron's own OVN metadata proxy.

Runs the serving half of neutron-ovn-metadata-agent, unmodified, from
PyPI's neutron package: `MetadataAgentOvnSbIdl` (the agent's Southbound IDL,
connected to a real ovsdb-server) and `UnixDomainMetadataProxy` (the unix
socket server whose handler looks the port up in the Southbound and proxies
to Nova with the signed headers). What it leaves out is the agent's
provisioning (namespaces, veths, OVS ports, haproxy processes via privsep):
the benchmark builds those itself, with the haproxy configuration that
neutron's own `HaproxyConfigurator` writes (the `haproxy-config` command).

    neutron_ovn_metadata.py serve --config-file neutron.ini --chassis NAME
    neutron_ovn_metadata.py haproxy-config --network ID [--network ID ...]
        --socket PATH --state-path DIR

`serve` prints "ready" once the IDL has its first view and the socket
listens.
"""

import argparse
import sys

from oslo_config import cfg

from neutron.agent.ovn.metadata import driver
from neutron.agent.ovn.metadata import ovsdb
from neutron.agent.ovn.metadata import server_socket
from neutron.common import config
from neutron.conf.agent.metadata import config as meta
from neutron.conf.agent.ovn.metadata import config as ovn_meta
from neutron.conf.plugins.ml2.drivers.ovn import ovn_conf


def register_options():
    """The options neutron.agent.ovn.metadata_agent.main registers."""
    config.register_common_config_options()
    ovn_conf.register_opts()
    ovn_meta.register_meta_conf_opts(meta.SHARED_OPTS)
    ovn_meta.register_meta_conf_opts(meta.UNIX_DOMAIN_METADATA_PROXY_OPTS)
    ovn_meta.register_meta_conf_opts(meta.METADATA_PROXY_HANDLER_OPTS)
    ovn_meta.register_meta_conf_opts(meta.METADATA_RATE_LIMITING_OPTS,
                                     group=meta.RATE_LIMITING_GROUP)
    ovn_meta.register_meta_conf_opts(meta.METADATA_HAPROXY_OPTS,
                                     group=meta.HAPROXY_GROUP)
    ovn_meta.register_meta_conf_opts(ovn_meta.OVS_OPTS, group='ovs')


def serve(config_file, chassis):
    config.init(['--config-file', config_file])
    config.setup_logging()
    # The tables and chassis condition MetadataAgent.start uses.
    tables = ('Encap', 'Port_Binding', 'Datapath_Binding', 'SB_Global',
              'Chassis', 'Chassis_Private')
    sb_idl = ovsdb.MetadataAgentOvnSbIdl(chassis=chassis,
                                         tables=tables).start()
    proxy = server_socket.UnixDomainMetadataProxy(cfg.CONF, chassis,
                                                  sb_idl=sb_idl)
    proxy.run()
    print('ready', flush=True)
    proxy.wait()


def haproxy_configs(networks, socket, state_path):
    """Writes each network's haproxy configuration; prints their paths."""
    config.init([])
    for network in networks:
        configurator = driver.HaproxyConfigurator(
            network_id=network, router_id=None, unix_socket_path=socket,
            host='169.254.169.254', port=80, user='root', group='root',
            state_path=state_path, pid_file=f'{state_path}/{network}.pid',
            rate_limiting_config=cfg.CONF.metadata_rate_limiting,
            haproxy_config=cfg.CONF.metadata_haproxy)
        configurator.create_config_file()
        print(configurator.cfg_path, flush=True)


def main():
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest='command', required=True)
    serve_args = commands.add_parser('serve')
    serve_args.add_argument('--config-file', required=True)
    serve_args.add_argument('--chassis', required=True)
    haproxy_args = commands.add_parser('haproxy-config')
    haproxy_args.add_argument('--network', required=True, action='append')
    haproxy_args.add_argument('--socket', required=True)
    haproxy_args.add_argument('--state-path', required=True)
    args = parser.parse_args()
    register_options()
    if args.command == 'serve':
        serve(args.config_file, args.chassis)
    else:
        haproxy_configs(args.network, args.socket, args.state_path)


if __name__ == '__main__':
    sys.exit(main())
