// Creates the server's MongoDB user. The official mongo image runs this file once,
// on the first start with an empty data volume (/docker-entrypoint-initdb.d),
// authenticated as the root user, against MONGO_INITDB_DATABASE.
//
// The server gets readWrite on its own database and nothing else: enough to
// create its indexes and collections and to run transactions and change
// streams there, but no user, role, server or other-database administration.
// The password is read from the secret file the server reads too, so it never
// appears on a command line or in the environment.
const fs = require("fs");

const database = process.env.MONGO_INITDB_DATABASE || "balcao";
const user = process.env.BALCAO_MONGODB_USER || "balcao";
const passwordFile = process.env.BALCAO_MONGODB_PASSWORD_FILE || "/run/secrets/mongodb_app_password";
const password = fs.readFileSync(passwordFile, "utf8").trim();
if (!password) {
  throw new Error(`${passwordFile} is empty`);
}

db.getSiblingDB(database).createUser({
  user: user,
  pwd: password,
  roles: [{ role: "readWrite", db: database }],
});
print(`created MongoDB user ${user} with readWrite on ${database}`);
