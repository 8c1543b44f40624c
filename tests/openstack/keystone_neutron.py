"""Keystone and neutron from PyPI, for the tests of the "neutron" port source.

  keystone_neutron.py template DIR       databases, keys and catalog, made once
  keystone_neutron.py serve WHICH BIND    keystone's or neutron's own WSGI
                                   application under gunicorn

Both applications read their configuration through oslo.config, which also
parses sys.argv: serve clears it before importing them. The configuration
files are in the folder OS_KEYSTONE_CONFIG_DIR / OS_NEUTRON_CONFIG_DIR
names (written by the test harness). The catalog names keystone at
127.0.0.1:5000 and neutron at 127.0.0.1:9696: each test serves them in a
network namespace of its own, so the template fits every test.
"""

import json
import os
import subprocess
import sys

ADMIN_PASSWORD = "admin-secret"
SERVICE_PASSWORD = "neutron-secret"
KEYSTONE = "http://127.0.0.1:5000/v3"
NEUTRON = "http://127.0.0.1:9696"
REGION = "RegionOne"


def keystone_conf(folder):
    return f"""[DEFAULT]
log_file = {folder}/keystone.log
[database]
connection = sqlite:///{folder}/keystone.db
[token]
provider = fernet
expiration = 3600
[fernet_tokens]
key_repository = {folder}/fernet-keys
[fernet_receipts]
key_repository = {folder}/fernet-receipts
[credential]
key_repository = {folder}/credential-keys
"""


def neutron_conf(folder):
    return f"""[DEFAULT]
core_plugin = ml2
service_plugins =
auth_strategy = keystone
transport_url = fake://
log_file = {folder}/neutron.log
api_paste_config = {sys.prefix}/etc/neutron/api-paste.ini
[database]
connection = sqlite:///{folder}/neutron.db
[keystone_authtoken]
www_authenticate_uri = {KEYSTONE}
auth_url = {KEYSTONE}
auth_type = password
username = admin
password = {ADMIN_PASSWORD}
project_name = admin
user_domain_name = Default
project_domain_name = Default
interface = public
[ml2]
type_drivers = vxlan
tenant_network_types = vxlan
mechanism_drivers = openvswitch
extension_drivers = port_security
[ml2_type_vxlan]
vni_ranges = 1:10000
[oslo_concurrency]
lock_path = {folder}/lock
"""


def write_confs(folder):
    with open(os.path.join(folder, "keystone.conf"), "w") as f:
        f.write(keystone_conf(folder))
    with open(os.path.join(folder, "neutron.conf"), "w") as f:
        f.write(neutron_conf(folder))


def keystone_manage(folder, *args):
    manage = os.path.join(os.path.dirname(sys.executable), "keystone-manage")
    subprocess.run(
        [manage, "--config-file", os.path.join(folder, "keystone.conf"), *args],
        check=True,
    )


def catalog(folder):
    """The service project and user, and neutron in the catalog, through
    keystone's own application (no port needed)."""
    os.environ["OS_KEYSTONE_CONFIG_DIR"] = folder
    sys.argv = sys.argv[:1]
    from keystone.server import wsgi

    client = wsgi.initialize_public_application().test_client()
    auth = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"id": "default"}, "password": ADMIN_PASSWORD}}},
        "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}
    reply = client.post("/v3/auth/tokens", json=auth)
    assert reply.status_code == 201, reply.data
    headers = {"X-Auth-Token": reply.headers["X-Subject-Token"]}

    def post(path, body):
        reply = client.post(path, json=body, headers=headers)
        assert reply.status_code in (200, 201), (path, reply.status_code, reply.data)
        return reply.get_json()

    project = post("/v3/projects", {"project": {"name": "service", "domain_id": "default"}})
    user = post("/v3/users", {"user": {"name": "neutron", "domain_id": "default",
                                       "password": SERVICE_PASSWORD}})
    roles = client.get("/v3/roles?name=admin", headers=headers).get_json()["roles"]
    put = client.put(
        f"/v3/projects/{project['project']['id']}/users/{user['user']['id']}"
        f"/roles/{roles[0]['id']}", headers=headers)
    assert put.status_code == 204, put.data
    service = post("/v3/services", {"service": {"type": "network", "name": "neutron"}})
    for interface in ("public", "internal", "admin"):
        post("/v3/endpoints", {"endpoint": {"service_id": service["service"]["id"],
                                            "interface": interface, "region_id": REGION,
                                            "url": NEUTRON}})
    return {"service_user_id": user["user"]["id"],
            "service_project_id": project["project"]["id"]}


def template(folder):
    os.makedirs(folder, exist_ok=True)
    os.makedirs(os.path.join(folder, "lock"), exist_ok=True)
    write_confs(folder)
    keystone_manage(folder, "db_sync")
    keystone_manage(folder, "fernet_setup", "--keystone-user", "root", "--keystone-group", "root")
    keystone_manage(folder, "credential_setup", "--keystone-user", "root", "--keystone-group", "root")
    keystone_manage(folder, "bootstrap", "--bootstrap-password", ADMIN_PASSWORD,
                    "--bootstrap-admin-url", KEYSTONE, "--bootstrap-internal-url", KEYSTONE,
                    "--bootstrap-public-url", KEYSTONE, "--bootstrap-region-id", REGION)
    ids = catalog(folder)
    # neutron-db-manage fails on sqlite; the schema from neutron's models works.
    import sqlalchemy
    from neutron.db.migration.models import head
    engine = sqlalchemy.create_engine(f"sqlite:///{folder}/neutron.db")
    head.get_metadata().create_all(engine)
    print(json.dumps(ids))


def copy(template_folder, folder):
    import shutil
    shutil.copytree(template_folder, folder, dirs_exist_ok=True)
    write_confs(folder)


def serve(which, bind):
    sys.argv = sys.argv[:1]
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self):
            for key, value in {"bind": bind, "workers": 1, "threads": 4,
                               "worker_class": "gthread", "timeout": 60,
                               "control_socket_disable": True,
                               "accesslog": None}.items():
                self.cfg.set(key, value)

        def load(self):
            if which == "keystone":
                from keystone.wsgi import api
            else:
                from neutron.wsgi import api
            return api.application

    Server().run()


if __name__ == "__main__":
    if sys.argv[1] == "template":
        template(sys.argv[2])
    elif sys.argv[1] == "copy":
        copy(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
